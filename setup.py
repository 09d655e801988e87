"""
Packaging for vmqtw.

``twisted/plugins/vmqtw_plugins.py`` is shipped as part of the
``twisted.plugins`` namespace so that ``twistd`` lists the ``vmqtw`` and
``vmqtw-admin`` commands once the package is installed.
"""
from setuptools import find_packages, setup

setup(
    name="vmqtw",
    version="0.1.0",
    description="A clustered MQTT broker on Twisted, modelled on VerneMQ",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["vmqtw", "vmqtw.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["vmqtw_plugins.py"]},
    include_package_data=True,
    install_requires=[
        "twisted>=23.10",
        "zope.interface>=6.0",
        "attrs>=23.1",
        "plyvel>=1.5",
        "msgpack>=1.0",
        "service-identity>=23.1",
        "pyopenssl>=23.2",
        "cryptography>=39",
        # The postgresql message store (imported only when it is chosen);
        # [binary]: psycopg's C implementation with its own libpq, 1.5x the
        # enqueue rate of the pure-Python one (benchmarks/store_bench.py).
        "psycopg[binary]>=3.1",
        "prometheus-client>=0.17",
        # WebSocket listeners (listener.ws / listener.wss): the framing,
        # handshake and closing handshake are autobahn's, not hand-written.
        "autobahn[twisted]>=23.1",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "paho-mqtt>=2.0",
            "mypy>=1.10",
            "mypy-zope>=1.0",
        ],
    },
    entry_points={
        "console_scripts": [
            "vmqtw-passwd = vmqtw.auth.passwd_cli:main",
            "vmqtw-admin = vmqtw.admin.cli:main",
        ],
    },
)
