"""Quality-of-service profiles for every omni_ros topic, in one place.

Sensor inputs use the sensor-data profile (best effort: a late frame is worth less than the next
one); audio keeps a deeper history so short executor stalls lose no samples. Outputs are
reliable; the audio format topics are latched (transient local) like audio_capture's, and so are
the alerts: omni_node keeps its last `alert_history` alerts for a console or an alert log that
starts late or restarts. A volatile subscriber (the recorder, `ros2 topic echo`) still matches
a transient-local publisher; a transient-local subscriber needs a transient-local publisher.
"""
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)

CAMERA = qos_profile_sensor_data
MIC_AUDIO = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                       reliability=ReliabilityPolicy.BEST_EFFORT,
                       durability=DurabilityPolicy.VOLATILE)
AUDIO_INFO = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)
TICK = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                  reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
OUTPUT = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=20,
                    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
SPEECH = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)

ALERT_HISTORY = 20   # omni_node's default alert_history


def alerts(depth: int = ALERT_HISTORY) -> QoSProfile:
    """omni/alerts: reliable, transient local, the last `depth` alerts kept. Subscribers that
    want what they missed (console, alert log) use it too; a subscriber's depth only bounds its
    own queue, the publisher's decides how many a late joiner gets."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth),
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


ALERTS = alerts()
