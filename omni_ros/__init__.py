"""omni_ros: a full-duplex omni-modal model (MiniCPM-o 4.5) behind ROS 2 camera and microphone topics.

Subpackages: flow (Omni-Flow, no ROS), model (the torch model), runtime (execution backends),
ros (nodes and conversions), tools (console scripts), msg (generated interfaces).
"""
__version__ = "0.1.0"
