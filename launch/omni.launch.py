"""Bring up the omni_ros graph: omni_flow_clock + omni_node with config/omni.yaml.

    ros2 launch omni_ros omni.launch.py model_path:=/path/to/MiniCPM-o-4_5 \
        camera_topic:=/camera/color/image_raw mic_topic:=/audio/audio_stamped

Both nodes get the large-frame Fast DDS profile (config/fastdds_large_frames.xml) unless
FASTDDS_DEFAULT_PROFILES_FILE or FASTDDS_BUILTIN_TRANSPORTS is set where ros2 launch runs; give
the camera driver's process the same profile (see the README, "Large camera frames").
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from omni_ros.tools.processes import large_frame_environment


def generate_launch_description():
    share = get_package_share_directory("omni_ros")
    arguments = {
        "model_path": ("", "checkpoint folder (released MiniCPM-o 4.5 or a tiny one)"),
        "backend": ("torch", "execution backend plugin: torch, onnxruntime, tensorrt"),
        "engine_dir": ("", "exported graphs / engines (omni_ros_build_engines); empty: "
                           "<model_path>/engines/<backend>"),
        "params_file": (os.path.join(share, "config", "omni.yaml"), "parameter file"),
        "namespace": ("", "namespace for both nodes"),
        "camera_topic": ("camera/image_raw", "sensor_msgs/Image input"),
        "mic_topic": ("mic/audio_stamped", "audio_common_msgs/AudioDataStamped input "
                                           "(AudioStamped with mgonzs13's audio_common_msgs)"),
        "mic_info_topic": ("mic/audio_info", "audio_common_msgs/AudioInfo input (ros-drivers)"),
        "speech_topic": ("speech/audio", "audio_common_msgs/AudioData output for audio_play "
                                         "(Audio with mgonzs13's audio_common_msgs)"),
        "use_sim_time": ("false", "follow /clock"),
        "autostart": ("true", "omni_node configures and activates itself; false: it waits "
                              "unconfigured for a lifecycle manager"),
    }
    declared = [DeclareLaunchArgument(name, default_value=default, description=text)
                for name, (default, text) in arguments.items()]
    config = {name: LaunchConfiguration(name) for name in arguments}
    common = [config["params_file"], {"use_sim_time": config["use_sim_time"]}]
    env = large_frame_environment(os.environ)
    clock = Node(package="omni_ros", executable="omni_flow_clock", name="omni_flow_clock",
                 namespace=config["namespace"], parameters=common, output="screen",
                 additional_env=env)
    # omni_node is a managed node (configure loads the model, activate starts it)
    model = LifecycleNode(package="omni_ros", executable="omni_node", name="omni_node",
                          namespace=config["namespace"], output="screen", additional_env=env,
                          parameters=[*common, {"model_path": config["model_path"],
                                                "backend": config["backend"],
                                                "engine_dir": config["engine_dir"],
                                                "autostart": config["autostart"]}],
                          remappings=[("camera/image_raw", config["camera_topic"]),
                                      ("mic/audio_stamped", config["mic_topic"]),
                                      ("mic/audio_info", config["mic_info_topic"]),
                                      ("speech/audio", config["speech_topic"])])
    return LaunchDescription([*declared, clock, model])
