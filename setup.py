"""The packages the wheel holds; every other setting is in pyproject.toml.

``framework`` and ``plugins`` are found with all their subpackages (any folder with an
``__init__.py``), so a new subpackage ships without editing a list. ``configs/`` ships as the
package ``editfriendly_configs`` (read by ``framework.config.config_dir`` when installed from a
wheel), a package whose name is not its folder's, which ``[tool.setuptools.packages.find]``
cannot name.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["framework", "framework.*", "plugins", "plugins.*"]), "editfriendly_configs"])
