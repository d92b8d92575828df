"""The {{name}} plugin for posup, in Python (built with componentize-py).

Updates {{name}} from packages named `{{name}}-<version>.tar.gz`, whose content
replaces the program folder:

- precheck: no sale open (the product's log last said `STATE: READY`, not
  `STATE: SALE`) and room for the update in /staging; without a log nothing
  tells whether a sale is open, and this template goes ahead;
- stage: the package unpacked into /staging/{{name}}-<version>;
- apply: the service stopped, /product kept in /backup/{{name}}, the staged
  tree put in its place (the site's config/ stays), the service started;
- verify: the service keeps running for `{{name}}-settle-secs` seconds (10
  unless the server sets the variable);
- rollback: the kept installation put back, byte for byte, and started.

Every step can run again after a crash: progress is read from the trees and
from kv, never assumed.
"""

import os
import re
import time

from componentize_py_types import Err
from wit_world import WitWorld
from wit_world.imports import archive, fs, kv, logs, progress, services, vars
from wit_world.imports.types import (
    Capabilities, Dir, DirRequest, Error, Inventory, Outcome_Failed, Outcome_NotNow,
    Outcome_Ok, NotNow, PackageInfo, PluginInfo,
)

SERVICE = "{{name}}"
BACKUP = "/backup/{{name}}"
# What an update never replaces: the site's own settings.
KEEP = {"config"}
NAME = re.compile(r"^{{name}}-([A-Za-z0-9][A-Za-z0-9._-]*)\.(tar\.gz|tgz)$")


class Stop(Exception):
    """A step ends early: failed, or (with retry_after) not now."""

    def __init__(self, reason, retry_after=None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def step(body):
    """Runs a step body and turns its end into the host's outcome."""
    try:
        body()
        return Outcome_Ok()
    except Stop as stop:
        if stop.retry_after is not None:
            return Outcome_NotNow(NotNow(stop.reason, stop.retry_after))
        return Outcome_Failed(stop.reason)
    except Err as err:
        value = err.value
        return Outcome_Failed(value.message if isinstance(value, Error) else str(value))
    except OSError as err:
        return Outcome_Failed(f"{err.filename}: {err.strerror}")


def exists(path):
    return os.path.lexists(path)


def staged_dir(version):
    return f"/staging/{{name}}-{version}"


def version_of(path):
    match = NAME.match(os.path.basename(path))
    if not match:
        raise Err(f"{os.path.basename(path)}: {{name}} packages are named {{name}}-<version>.tar.gz")
    return match.group(1)


def log_path():
    name = (vars.get("{{name}}-log") or "{{name}}.log").strip()
    if "/" in name or name in (".", ".."):
        raise Stop(f"the server variable `{{name}}-log` must name a file in the logs folder: {name}")
    return f"/logs/{name}"


def mirror(source, target):
    """Makes target hold what source holds, except the kept names."""
    for name in os.listdir(target):
        if name not in KEEP:
            fs.remove_tree(f"{target}/{name}")
    for name in os.listdir(source):
        if name not in KEEP:
            fs.copy_tree(f"{source}/{name}", f"{target}/{name}")


def settle(seconds):
    started = time.monotonic()
    while True:
        state = services.status(SERVICE)
        if state != services.State.RUNNING:
            raise Stop(f"{SERVICE} stopped ({state.name.lower()}) after it was started with the update")
        if time.monotonic() - started >= seconds:
            return
        time.sleep(0.2)


class WitWorld(WitWorld):
    def info(self):
        return PluginInfo(
            name="{{name}}",
            vendor="{{vendor}}",
            version="0.1.0",
            description="Updates {{name}}: stops it, replaces the program, checks it runs",
            device_types=["{{name}}"],
            capabilities=Capabilities(
                dirs=[
                    DirRequest(Dir.PRODUCT, True),
                    DirRequest(Dir.STAGING, True),
                    DirRequest(Dir.BACKUP, True),
                    DirRequest(Dir.LOGS, False),
                ],
                services=[SERVICE],
                scripts=False,
                prompt=False,
            ),
        )

    def databases(self):
        # The product databases this plugin reads (none): see `database` in
        # wit/plugin.wit.
        return []

    def inventory(self):
        running = services.status(SERVICE) == services.State.RUNNING
        return Inventory(
            product="{{name}}",
            version=kv.get("installed") or "",
            modules=[],
            loaded_package=None,
            state="running" if running else "stopped",
            pending_sync=0,
            ready=running,
            reboot_required=False,
            details=[],
        )

    def inspect(self, package):
        version = version_of(package)
        try:
            changelog = archive.read_entry(package, "CHANGELOG.txt", 256 * 1024).decode()
        except Err:
            changelog = ""
        return PackageInfo(version, "program", f"{{name}} {version}", changelog, True)

    def precheck(self, ctx):
        def body():
            try:
                lines = logs.tail(log_path(), 200)
            except Err:
                lines = []
            states = [l.split("STATE: ", 1)[1].strip() for l in lines if "STATE: " in l]
            if states and states[-1] == "SALE":
                raise Stop(f"a sale is open: {log_path()} says STATE: SALE", 60)
            needed = 4 * os.stat(ctx.package).st_size
            free = fs.free_space("/staging")
            if free < needed:
                raise Stop(f"not enough disk space: {free} bytes free on /staging, {needed} needed")
        return step(body)

    def stage(self, ctx):
        def body():
            version = ctx.info.version
            staged = staged_dir(version)
            if kv.get("staged") == version and exists(staged):
                return
            kv.delete("staged")
            fs.remove_tree(staged)
            os.mkdir(staged)
            progress.report(10, "unpacking the package")
            archive.extract(ctx.package, staged)
            kv.set("staged", version)
        return step(body)

    def apply(self, ctx):
        def body():
            staged = staged_dir(ctx.info.version)
            if not exists(staged):
                raise Stop(f"{staged} is not prepared: the stage step did not run")
            services.stop(SERVICE)
            # One finished copy per update: a copy cut short is made again.
            if kv.get("backup") != ctx.info.version or not exists(BACKUP):
                kv.delete("backup")
                fs.remove_tree(BACKUP)
                fs.copy_tree("/product", BACKUP)
                kv.set("backup", ctx.info.version)
            progress.report(60, "installing")
            mirror(staged, "/product")
            services.start(SERVICE)
        return step(body)

    def verify(self, ctx):
        def body():
            seconds = int((vars.get("{{name}}-settle-secs") or "10").strip())
            settle(seconds)
        return step(body)

    def commit(self, ctx):
        def body():
            fs.remove_tree(BACKUP)
            kv.delete("backup")
            fs.remove_tree(staged_dir(ctx.info.version))
            kv.delete("staged")
            kv.set("installed", ctx.info.version)
        return step(body)

    def rollback(self, ctx):
        def body():
            services.stop(SERVICE)
            if kv.get("backup") is not None and exists(BACKUP):
                mirror(BACKUP, "/product")
            fs.remove_tree(BACKUP)
            kv.delete("backup")
            fs.remove_tree(staged_dir(ctx.info.version))
            kv.delete("staged")
            services.start(SERVICE)
        return step(body)
