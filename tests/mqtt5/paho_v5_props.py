# paho-mqtt 2.x as an MQTT 5 client against coremq (2 shards), for the rest of issue 15's v5 list: Assigned Client
# Identifier, Server Keep Alive, Response Information, Maximum Packet Size both ways, reason strings (and their
# absence when Request Problem Information is 0), AUTH with an unknown method -> 0x8C, server-assigned topic
# aliases, server redirection, and shared subscriptions (no retained messages on them; a member that leaves with
# unacknowledged messages hands them to the other member). Prints OK or fails an assert.
# argv: port, redirect_port, member id on shard 0, member id on shard 1.
import sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

port, redirect_port = int(sys.argv[1]), int(sys.argv[2])
member_ids = sys.argv[3:5]
V2 = mqtt.CallbackAPIVersion.VERSION2


class Conn:
    """A paho v5 client whose CONNACK, DISCONNECT and messages are recorded."""

    def __init__(self, cid, port=port, props=None, keepalive=30, manual_ack=False, clean=True):
        self.c = mqtt.Client(V2, client_id=cid, protocol=mqtt.MQTTv5, manual_ack=manual_ack)
        self.connack = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.disconnect_reason = None
        self.disconnect_props = None
        self.msgs = []
        self.lock = threading.Lock()
        self.subacked = threading.Event()
        self.c.on_connect = self.on_connect
        self.c.on_disconnect = self.on_disconnect
        self.c.on_message = self.on_message
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacked.set()
        self.c.connect("127.0.0.1", port, keepalive, clean_start=clean, properties=props)
        self.c.loop_start()
        assert self.connected.wait(5), cid

    def on_connect(self, c, u, flags, rc, props):
        self.connack = (rc.value, props)
        self.connected.set()

    def on_disconnect(self, c, u, flags, rc, props):
        self.disconnect_reason = rc.value
        self.disconnect_props = props
        self.disconnected.set()

    def on_message(self, c, u, m):
        with self.lock:
            self.msgs.append(m)

    def sub(self, topic, qos=1):
        self.subacked.clear()
        self.c.subscribe(topic, qos=qos)
        assert self.subacked.wait(5), topic

    def wait_msgs(self, n, secs=5):
        end = time.time() + secs
        while len(self.msgs) < n and time.time() < end:
            time.sleep(0.02)
        return list(self.msgs)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def props(**kw):
    p = Properties(PacketTypes.CONNECT)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


# --- Assigned Client Identifier, Server Keep Alive (max_keepalive = 10), Maximum Packet Size announced.
a = Conn("", keepalive=60)
rc, p = a.connack
assert rc == 0, rc
assert getattr(p, "AssignedClientIdentifier", ""), "no assigned client identifier"
assert p.ServerKeepAlive == 10, p
assert p.MaximumPacketSize == 4096, p
assert not hasattr(p, "ResponseInformation"), "response information sent unasked"
a.close()

# --- Response Information, only when asked.
r = Conn("paho5-resp", props=props(RequestResponseInformation=1))
assert r.connack[1].ResponseInformation.startswith("resp/"), r.connack
r.close()

# --- AUTH with an unknown method -> CONNACK 0x8C.
c = mqtt.Client(V2, client_id="paho5-auth", protocol=mqtt.MQTTv5)
seen = []
c.on_connect = lambda c, u, f, rc, p: seen.append(rc.value)
c.connect("127.0.0.1", port, 30, properties=props(AuthenticationMethod="SCRAM-SHA-1"))
c.loop_start()
end = time.time() + 5
while not seen and time.time() < end:
    time.sleep(0.02)
c.loop_stop()
assert seen and seen[0] == 0x8C, seen

# --- Maximum Packet Size, the client's: a subscriber that allows 300 bytes gets the small message only.
small = Conn("paho5-small", props=props(MaximumPacketSize=300))
small.sub("mps/#")
pub = Conn("paho5-pub")
pub.c.publish("mps/t", "x" * 1000, qos=1).wait_for_publish(5)
pub.c.publish("mps/t", "small", qos=1).wait_for_publish(5)
got = small.wait_msgs(1)
time.sleep(0.3)
assert [m.payload for m in small.msgs] == [b"small"], [len(m.payload) for m in small.msgs]
small.close()

# --- Server-assigned topic aliases: a subscriber allowing 5 sees the topic and an alias, then the alias alone.
al = Conn("paho5-alias", props=props(TopicAliasMaximum=5))
al.sub("alias/#")
for n in range(3):
    pub.c.publish("alias/topic", str(n), qos=1).wait_for_publish(5)
got = al.wait_msgs(3)
assert len(got) == 3, got
aliases = [getattr(m.properties, "TopicAlias", None) for m in got]
assert aliases[0] is not None and aliases == [aliases[0]] * 3, aliases
# paho does not map incoming aliases: the first carries the topic, the later ones only the alias.
assert [m.topic for m in got] == ["alias/topic", "", ""], [m.topic for m in got]
al.close()

# --- Shared subscriptions: a retained message is not sent on one, it is on a plain one.
pub.c.publish("sr/1", "kept", qos=1, retain=True).wait_for_publish(5)
shared = Conn("paho5-shared-r")
shared.sub("$share/g/sr/#")
plain = Conn("paho5-plain-r")
plain.sub("sr/#")
assert [m.payload for m in plain.wait_msgs(1)] == [b"kept"]
time.sleep(0.5)
assert shared.msgs == [], shared.msgs
shared.close()
plain.close()
pub.c.publish("sr/1", "", qos=1, retain=True).wait_for_publish(5)

# --- A member (shard 0) that never acknowledges and goes away: its messages go to the other (shard 1).
leaver = Conn(member_ids[0], manual_ack=True)
leaver.sub("$share/grp/sd/+")
stays = Conn(member_ids[1])
stays.sub("$share/grp/sd/+")
for n in range(20):
    pub.c.publish("sd/1", str(n), qos=1).wait_for_publish(5)
time.sleep(0.5)
held = {m.payload.decode() for m in leaver.msgs}
assert 0 < len(held) < 20, held
leaver.c.loop_stop()
leaver.c.socket().close()  # gone without acknowledging
got = stays.wait_msgs(20, secs=10)
payloads = [m.payload.decode() for m in got]
assert sorted(payloads, key=int) == [str(n) for n in range(20)], payloads
stays.close()

# --- Reason strings: a protocol error (a topic alias over our maximum of 10) is explained on DISCONNECT, unless
# the client set Request Problem Information 0.
for problem_info, want_reason in ((None, True), (0, False)):
    kw = {} if problem_info is None else {"RequestProblemInformation": problem_info}
    bad = Conn("paho5-bad-alias", props=props(**kw) if kw else None)
    pp = Properties(PacketTypes.PUBLISH)
    pp.TopicAlias = 11
    bad.c.publish("x/y", "z", qos=0, properties=pp)
    assert bad.disconnected.wait(5), "not disconnected"
    assert bad.disconnect_reason == 0x94, bad.disconnect_reason
    has = bad.disconnect_props is not None and bool(getattr(bad.disconnect_props, "ReasonString", ""))
    assert has == want_reason, (problem_info, bad.disconnect_props)
    bad.c.loop_stop()

# --- Maximum Packet Size, ours (4096): a bigger PUBLISH -> DISCONNECT 0x95.
big = Conn("paho5-big")
big.c.publish("big/t", "x" * 8000, qos=0)
assert big.disconnected.wait(5), "not disconnected"
assert big.disconnect_reason == 0x95, big.disconnect_reason
big.c.loop_stop()
pub.close()

# --- Server redirection (the second broker: server_reference = "box2:1883", redirect = "moved").
c = mqtt.Client(V2, client_id="paho5-moving", protocol=mqtt.MQTTv5)
seen = []
c.on_connect = lambda c, u, f, rc, p: seen.append((rc.value, getattr(p, "ServerReference", None)))
c.connect("127.0.0.1", redirect_port, 30)
c.loop_start()
end = time.time() + 5
while not seen and time.time() < end:
    time.sleep(0.02)
c.loop_stop()
assert seen == [(0x9D, "box2:1883")], seen
print("OK")
