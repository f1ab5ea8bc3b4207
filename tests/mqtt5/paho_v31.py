# paho-mqtt 2.x speaking MQTT 3.1 (MQIsdp) to coremq: QoS 0/1/2 publish and subscribe, and a retained message.
import sys, time, threading
import paho.mqtt.client as mqtt

port = int(sys.argv[1])
V2 = mqtt.CallbackAPIVersion.VERSION2
got = []
done = threading.Event()


def on_message(c, u, m):
    got.append((m.topic, m.payload.decode(), m.qos))
    if len(got) == 4:
        done.set()


pub = mqtt.Client(V2, client_id="paho31-pub", protocol=mqtt.MQTTv31)
pub.connect("127.0.0.1", port, 30)
pub.loop_start()
pub.publish("v31/retained", "kept", qos=1, retain=True).wait_for_publish(5)
sub = mqtt.Client(V2, client_id="paho31-sub", protocol=mqtt.MQTTv31)
sub.on_message = on_message
sub.connect("127.0.0.1", port, 30)
sub.loop_start()
sub.subscribe("v31/#", qos=2)
time.sleep(0.5)
for q in (0, 1, 2):
    pub.publish("v31/t", "q%d" % q, qos=q).wait_for_publish(5)
done.wait(10)
sub.disconnect(); sub.loop_stop()
pub.disconnect(); pub.loop_stop()
assert sorted(got) == [("v31/retained", "kept", 1), ("v31/t", "q0", 0), ("v31/t", "q1", 1), ("v31/t", "q2", 2)], got
print("OK")
