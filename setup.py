"""ament_python package set-up for flow2seg_ros (colcon build, or pip install -e . off ROS)."""
from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'flow2seg_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    package_data={package_name: ['bundled/*.safetensors', 'bundled/*.json']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        (os.path.join('share', package_name, 'launch'), glob('launch/*.launch.py')),
        (os.path.join('share', package_name, 'config'),
         glob('config/*.yaml') + glob('config/*.xml')),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='flow2seg_ros maintainers',
    maintainer_email='team@flow2seg.invalid',
    description='Motion-aided semantic segmentation (Flow2Seg) as a ROS 2 node.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'seg_node = flow2seg_ros.node:main',
            'seg_lifecycle_node = flow2seg_ros.lifecycle_node:main',
            'flow2seg-synth = flow2seg_ros.data.synth:main',
            'flow2seg-train = flow2seg_ros.train:main',
            'flow2seg-evaluate = flow2seg_ros.evaluate:main',
            'flow2seg-bag-eval = flow2seg_ros.bag_eval:main',
            'flow2seg-make-bag = flow2seg_ros.make_bag:main',
            'flow2seg-bench = flow2seg_ros.bench:main',
            'flow2seg-export = flow2seg_ros.export:main',
            'flow2seg-demo = flow2seg_ros.demo:main',
            'flow2seg-train-flow = flow2seg_ros.train_flow:main',
            'flow2seg-flow-bench = flow2seg_ros.flow_bench:main',
        ],
    },
)
