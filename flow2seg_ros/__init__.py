"""flow2seg_ros: motion-aided semantic segmentation (Flow2Seg) for ROS 2 camera streams."""

__version__ = '0.1.0'
