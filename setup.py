"""Packaging beyond pyproject.toml: conf/ stays at the top of the repository (Hydra's layout), and ships inside the
package as bcc_lightning/conf, so an installed wheel finds its configs from any folder."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
conf_packages = ["bcc_lightning.conf"] + [
    "bcc_lightning.conf." + path.relative_to(HERE / "conf").as_posix().replace("/", ".")
    for path in sorted((HERE / "conf").rglob("*")) if path.is_dir()
]

setup(
    packages=find_packages(include=["bcc_lightning", "bcc_lightning.*"]) + conf_packages,
    package_dir={"bcc_lightning.conf": "conf"},
    package_data={name: ["*.yaml"] for name in conf_packages},
)
