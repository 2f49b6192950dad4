"""pip install of the aqr_perception Python package (development / non-colcon use).

In a colcon workspace the package builds with ament_cmake (CMakeLists.txt installs the
interfaces, this Python package and the executables); scripts/setup uses this file for
an editable install into .venv after building the interfaces with rosidl.
"""
from setuptools import find_packages, setup

setup(
    name="aqr_perception",
    version="0.1.0",
    description="Camera+LiDAR 3D detection for ROS 2: CMT with adaptive query routing (AQR)",
    license="Apache-2.0",
    python_requires="==3.11.*",
    packages=find_packages(include=["aqr_perception", "aqr_perception.*"]),
    package_data={"aqr_perception": ["ros/*.xml", "resources/*", "resources/*/*"]},
    # Runtime dependencies are pinned in requirements.txt (ROS wheels, torch CPU wheel);
    # declaring them here would let pip pull an unpinned CUDA torch.
    install_requires=[],
    entry_points={
        "console_scripts": [
            "aqr-perception = aqr_perception.cli:main",
            "aqr_perception_node = aqr_perception.ros.node:main",
        ],
    },
)
