"""Package definition: everything is read from settings.ini (nbdev 2 layout)."""
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

for key in "lib_name version description author author_email license min_python".split():
    assert key in cfg, f"settings.ini is missing `{key}`"

licenses = {"apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License")}
lic = licenses[cfg["license"]]

requirements = cfg.get("requirements", "").split()
dev_requirements = cfg.get("dev_requirements", "").split()
extras = {
    "kv": ["kvpress==0.5.5"],
    "bandit": ["mteb"],
    "llgbm": ["peft", "faiss-cpu"],
    "embed": ["sentence-transformers"],
    "dist": ["dask[distributed]", "dask-jobqueue"],
    "lab": ["jupyterlab"],
    "docs": ["mkdocs", "mkdocs-material", "mkdocstrings-python", "mkdocs-autorefs", "pymdown-extensions", "django-static-mathjax"],
}
extras["all"] = sorted({r for reqs in extras.values() for r in reqs})
extras["dev"] = dev_requirements

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=lic[0],
    classifiers=["Programming Language :: Python :: 3", "License :: " + lic[1]],
    url=cfg["git_url"],
    packages=setuptools.find_packages(include=["labnb", "labnb.*"]),
    include_package_data=True,
    package_data={"labnb": ["templates/*", "configs/*"]},
    install_requires=requirements,
    extras_require=extras,
    python_requires=">=" + cfg["min_python"],
    zip_safe=False,
    entry_points={
        "console_scripts": cfg.get("console_scripts", "").split(),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
)
