# paho-mqtt 2.x (MQTT 5) against coremq announcing Receive Maximum 4, with a persistent subscriber so every QoS 1
# publish is written to the log and its PUBACK waits for the fsync (interval set long by the test). paho does not
# apply the server's Receive Maximum to itself (it sends up to its own max_inflight, 20 here), so it exceeds it:
# the client must receive DISCONNECT 0x93, not a reset. Prints OK or fails an assert.
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

port = int(sys.argv[1])
V2 = mqtt.CallbackAPIVersion.VERSION2

# A persistent QoS 1 subscriber, then offline: its queue is in the log.
sub = mqtt.Client(V2, client_id="paho-rm-sub", protocol=mqtt.MQTTv5)
props = Properties(PacketTypes.CONNECT)
props.SessionExpiryInterval = 3600
subscribed = threading.Event()
sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
sub.connect("127.0.0.1", port, 30, clean_start=True, properties=props)
sub.loop_start()
sub.subscribe("rm/q", qos=1)
assert subscribed.wait(15), "no SUBACK"
sub.disconnect()
sub.loop_stop()

announced = []
reasons = []
done = threading.Event()


def on_connect(c, u, flags, rc, p):
    announced.append(getattr(p, "ReceiveMaximum", None))


def on_disconnect(c, u, flags, rc, p):
    reasons.append(rc)
    done.set()


pub = mqtt.Client(V2, client_id="paho-rm-pub", protocol=mqtt.MQTTv5)
pub.max_inflight_messages_set(20)
pub.on_connect = on_connect
pub.on_disconnect = on_disconnect
pub.connect("127.0.0.1", port, 30, clean_start=True)
pub.loop_start()
for i in range(20):
    pub.publish("rm/q", "m%d" % i, qos=1)
assert done.wait(15), "no disconnect"
pub.loop_stop()
assert announced == [4], announced
assert len(reasons) == 1 and reasons[0].value == 0x93, [str(r) for r in reasons]
assert reasons[0].is_failure
print("OK")
