"""Quality-of-service profiles for every omni_ros topic, in one place.

Sensor inputs use the sensor-data profile (best effort: a late frame is worth less than the next
one); audio keeps a deeper history so short executor stalls lose no samples. Outputs are
reliable; the audio format topics are latched (transient local) like audio_capture's.
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
