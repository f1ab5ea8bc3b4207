# paho-mqtt 2.x as an MQTT 5 client against coremq: message expiry (retained, remaining interval forwarded) and
# will delay (published after the delay; cancelled by a reconnect in time). Prints OK or fails an assert.
import sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

port = int(sys.argv[1])
V2 = mqtt.CallbackAPIVersion.VERSION2


def client(cid, **kw):
    c = mqtt.Client(V2, client_id=cid, protocol=mqtt.MQTTv5, **kw)
    return c


def connect(c, expiry=None, clean=True):
    props = None
    if expiry is not None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
    c.connect("127.0.0.1", port, 30, clean_start=clean, properties=props)
    c.loop_start()


# --- message expiry: a retained message past its interval is not sent; the live one carries what remains. The
# same two messages queued for an offline persistent subscriber: the expired one is dropped from its queue.
off_got = []
off_ev = threading.Event()


def on_off_message(c, u, m):
    off_got.append((m.topic, getattr(m.properties, "MessageExpiryInterval", None)))
    off_ev.set()


off_subacked = threading.Event()
off = client("paho5-offline")
off.on_subscribe = lambda c, u, mid, rcs, p: off_subacked.set()
connect(off, expiry=300)
off.subscribe("exp/#", qos=1)
assert off_subacked.wait(5)
off.disconnect(); off.loop_stop()
time.sleep(0.3)
pub = client("paho5-pub")
connect(pub)
for topic, secs in (("exp/short", 1), ("exp/long", 100)):
    p = Properties(PacketTypes.PUBLISH)
    p.MessageExpiryInterval = secs
    pub.publish(topic, "m", qos=1, retain=True, properties=p).wait_for_publish(5)
time.sleep(2.5)
got = []
ev = threading.Event()


def on_message(c, u, m):
    got.append((m.topic, getattr(m.properties, "MessageExpiryInterval", None)))
    ev.set()


sub = client("paho5-sub")
sub.on_message = on_message
connect(sub)
sub.subscribe("exp/#", qos=1)
ev.wait(5)
time.sleep(0.5)
sub.disconnect(); sub.loop_stop()
assert len(got) == 1 and got[0][0] == "exp/long", got
assert 90 <= got[0][1] < 100, got
off = client("paho5-offline")
off.on_message = on_off_message
connect(off, expiry=300, clean=False)
off_ev.wait(5)
time.sleep(0.5)
off.disconnect(); off.loop_stop()
assert len(off_got) == 1 and off_got[0][0] == "exp/long", off_got
assert 90 <= off_got[0][1] < 100, off_got

# --- will delay.
wills = []
will_ev = threading.Event()


def on_will(c, u, m):
    wills.append(m.payload.decode())
    will_ev.set()


watcher = client("paho5-watch")
watcher.on_message = on_will
connect(watcher)
watcher.subscribe("will/#", qos=1)
time.sleep(0.5)


def dying(cid, payload, delay):
    c = client(cid)
    wp = Properties(PacketTypes.WILLMESSAGE)
    wp.WillDelayInterval = delay
    c.will_set("will/" + cid, payload, qos=1, properties=wp)
    connect(c, expiry=60)
    time.sleep(0.3)
    c.loop_stop()
    c.socket().close()  # no DISCONNECT: an abnormal close


# Reconnecting within the delay cancels the will.
dying("paho5-back", "back", 30)
time.sleep(0.5)
back = client("paho5-back")
connect(back, expiry=60, clean=False)
# The delayed will arrives after its delay.
dying("paho5-dead", "dead", 2)
will_ev.wait(15)
time.sleep(1.0)
back.disconnect(); back.loop_stop()
watcher.disconnect(); watcher.loop_stop()
assert wills == ["dead"], wills
print("OK")
