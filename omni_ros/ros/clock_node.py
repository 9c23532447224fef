"""omni_flow_clock: announces the end of every Omni-Flow window on omni_flow/tick.

Windows are aligned to multiples of `window_sec` on the ROS clock (sim time honoured). The clock
is polled on a steady timer, so sim time that pauses, leaps or jumps back is handled: a backward
jump starts a new epoch, a leap announces only the newest window and counts the rest as skipped.
"""
from __future__ import annotations

import sys

from rclpy.clock import Clock, ClockType
from rclpy.node import Node

from omni_ros.flow.timeline import TickScheduler
from omni_ros.flow.units import seconds_to_ns
from omni_ros.msg import FlowTick
from omni_ros.ros import qos
from omni_ros.ros.parameters import CLOCK_NODE_PARAMETERS, declare_all
from omni_ros.ros.conversions import ns_to_stamp
from omni_ros.ros.runner import node_main


class OmniFlowClock(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("omni_flow_clock", **kwargs)
        settings = declare_all(self, CLOCK_NODE_PARAMETERS)
        window_sec = settings["window_sec"]
        self.scheduler = TickScheduler(window_ns=seconds_to_ns(window_sec))
        self.tick_publisher = self.create_publisher(FlowTick, "omni_flow/tick", qos.TICK)
        self.poll_timer = self.create_timer(settings["poll_period_sec"],
                                            self.poll, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(f"announcing {window_sec:.3f} s windows on "
                               f"{self.tick_publisher.topic_name}")

    def poll(self) -> None:
        now_ns = self.get_clock().now().nanoseconds
        if now_ns == 0:
            return   # sim time before the first /clock message: no timeline yet
        batch = self.scheduler.poll(now_ns)
        if batch.new_epoch:
            self.get_logger().warning(f"clock jumped backwards: epoch {self.scheduler.epoch} starts")
        if batch.windows_skipped:
            self.get_logger().warning(f"clock leapt forward: {batch.windows_skipped} windows skipped")
        for tick in batch.ticks:
            message = FlowTick()
            message.header.stamp = ns_to_stamp(tick.end_ns)
            message.index = tick.index
            message.start = ns_to_stamp(tick.start_ns)
            message.end = ns_to_stamp(tick.end_ns)
            message.epoch = tick.epoch
            self.tick_publisher.publish(message)


def main(args=None) -> int:
    return node_main(OmniFlowClock, args)


if __name__ == "__main__":
    sys.exit(main())
