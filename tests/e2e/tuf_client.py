"""The reference TUF client (python-tuf's ngclient) against a posup server.

Bootstraps from the fleet's root.json, refreshes the whole chain from the
server's /tuf/metadata/, and downloads and verifies the given targets from
/tuf/targets/ with a device token. Prints the path of each downloaded file;
exits 1 naming what failed.
"""

import argparse
import os
import shutil
import sys
import urllib.error
import urllib.request

from tuf.api import exceptions
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface


class TokenFetcher(FetcherInterface):
    """Fetches with a bearer token: posup serves targets to its devices only."""

    def __init__(self, token):
        self.token = token

    def _fetch(self, url):
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        try:
            response = urllib.request.urlopen(request, timeout=30)
        except urllib.error.HTTPError as e:
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {e.code}", e.code) from e

        def chunks():
            with response:
                while True:
                    chunk = response.read(64 * 1024)
                    if not chunk:
                        return
                    yield chunk

        return chunks()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("targets", nargs="+")
    a = p.parse_args()
    metadata = os.path.join(a.dir, "metadata")
    out = os.path.join(a.dir, "targets")
    os.makedirs(metadata, exist_ok=True)
    os.makedirs(out, exist_ok=True)
    shutil.copy(a.root, os.path.join(metadata, "root.json"))
    with open(a.root, "rb") as f:
        root = f.read()
    updater = Updater(
        metadata_dir=metadata,
        metadata_base_url=f"{a.server}/tuf/metadata/",
        target_base_url=f"{a.server}/tuf/targets/",
        target_dir=out,
        fetcher=TokenFetcher(a.token),
        bootstrap=root,
    )
    updater.refresh()
    for name in a.targets:
        info = updater.get_targetinfo(name)
        if info is None:
            print(f"{name}: no such target in the signed metadata", file=sys.stderr)
            return 1
        path = updater.download_target(info, filepath=os.path.join(out, name.replace("/", "_")))
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
