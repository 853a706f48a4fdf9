"""Checks the FortiOS emulator with the fortigate-api client (PyPI) over verified TLS.

Run by fw-sync/tests/vendor_fortios.rs with FORTIOS_HOST, FORTIOS_PORT, FORTIOS_TOKEN and
REQUESTS_CA_BUNDLE (the emulator's CA: fortigate-api's `verify` is a bool, requests takes
the CA from that variable). Every step asserts; a failure exits non-zero.
"""

import os
import sys

import requests
from fortigate_api import FortiGate, FortiGateAPI

HOST = os.environ["FORTIOS_HOST"]
PORT = int(os.environ["FORTIOS_PORT"])
TOKEN = os.environ["FORTIOS_TOKEN"]
assert os.environ.get("REQUESTS_CA_BUNDLE"), "REQUESTS_CA_BUNDLE must point at the emulator CA"


def check(cond, what, resp=None):
    if not cond:
        detail = f" -> HTTP {resp.status_code}: {resp.text}" if resp is not None else ""
        print(f"FAIL: {what}{detail}")
        sys.exit(1)
    print(f"ok: {what}")


api = FortiGateAPI(host=HOST, port=PORT, token=TOKEN, verify=True)
api.login()  # GET /api/v2/monitor/system/status with the Bearer token
check(api.fortigate.is_connected, "token login (monitor/system/status)")

addr = api.cmdb.firewall.address
grp = api.cmdb.firewall.addrgrp

r = addr.create({"name": "py-a1", "type": "ipmask", "subnet": "10.50.0.1 255.255.255.255", "comment": "from python"})
check(r.status_code == 200 and r.json()["status"] == "success" and r.json()["mkey"] == "py-a1", "create address py-a1", r)
r = addr.create({"name": "py-a2", "subnet": "10.50.0.2/32"})
check(r.ok and r.json()["http_method"] == "POST" and r.json()["revision_changed"] is True, "create address py-a2 (CIDR subnet)", r)

r = addr.create({"name": "py-a1", "subnet": "10.50.0.9/32"})
body = r.json()
check(not r.ok and r.status_code == 500 and body["status"] == "error" and body["error"] == -5, "duplicate address refused (500, -5)", r)

items = addr.get(name="py-a1")
check(len(items) == 1 and items[0]["subnet"] == "10.50.0.1 255.255.255.255" and items[0]["comment"] == "from python", "get one address")
items = addr.get(name="py-a2")
check(items[0]["subnet"] == "10.50.0.2 255.255.255.255" and items[0]["type"] == "ipmask", "subnet normalised to address + mask")
check(addr.is_exist("py-a1") and not addr.is_exist("py-none"), "is_exist")
check(addr.get(name="py-none") == [], "get of a missing address is empty")
names = sorted(o["name"] for o in addr.get(filter="name=@py-"))
check(names == ["py-a1", "py-a2"], f"filter name=@py- -> {names}")
names = [o["name"] for o in addr.get(filter=["name=@py-", "subnet=@10.50.0.2"])]
check(names == ["py-a2"], f"two filters are AND -> {names}")
names = sorted(o["name"] for o in addr.get(filter="name==py-a1,name==py-a2"))
check(names == ["py-a1", "py-a2"], f"comma is OR -> {names}")

r = addr.create({"name": "py-bad", "subnet": "10.50.0.300/32"})
check(r.status_code == 424 and r.json()["error"] == -8, "invalid subnet refused (424, -8)", r)
r = addr.create({"name": "p" * 80, "subnet": "10.50.0.3/32"})
check(r.status_code == 424 and r.json()["error"] == -1, "80-character name refused (424, -1)", r)

r = grp.create({"name": "py-g", "member": [{"name": "py-a1"}]})
check(r.ok, "create addrgrp py-g", r)
r = grp.create({"name": "py-g2", "member": [{"name": "py-nope"}]})
check(r.status_code == 424 and r.json()["error"] == -3, "group with a missing member refused (424, -3)", r)
r = grp.create({"name": "py-empty", "member": []})
check(not r.ok and r.status_code == 424, "empty group refused", r)
r = grp.update({"name": "py-g", "member": [{"name": "py-a1"}, {"name": "py-a2"}]})
check(r.ok and r.json()["http_method"] == "PUT", "update replaces the member list", r)
members = sorted(m["name"] for m in grp.get(name="py-g")[0]["member"])
check(members == ["py-a1", "py-a2"], f"members after update -> {members}")
r = grp.update({"name": "py-g", "member": [{"name": "py-a2"}]})
members = [m["name"] for m in grp.get(name="py-g")[0]["member"]]
check(r.ok and members == ["py-a2"], f"update shrinks the list -> {members}", r)
r = grp.update({"name": "py-missing", "member": [{"name": "py-a2"}]})
check(r.status_code == 404, "update of a missing group -> 404", r)

r = addr.delete("py-a2")
check(r.status_code == 500 and r.json()["error"] == -23, "delete of an address in a group refused (500, -23)", r)
r = grp.delete("py-g")
check(r.ok, "delete group", r)
r = grp.delete("py-g")
check(r.status_code == 404, "delete of a missing group -> 404", r)
r = addr.delete(filter="name=@py-")
check(r.ok and addr.get(filter="name=@py-") == [], "delete by filter", r)

# VDOMs: objects are per VDOM; an unknown VDOM is a permission error.
api.vdom = "dmz"
check(addr.get() == [], "dmz starts empty")
r = addr.create({"name": "py-dmz", "subnet": "10.60.0.1/32"})
check(r.ok and r.json()["vdom"] == "dmz", "create in dmz", r)
api.vdom = "root"
check(addr.get(name="py-dmz") == [], "dmz object not visible in root")
api.vdom = "nope"
r = api.fortigate.get("api/v2/cmdb/firewall/address")
check(r.status_code == 403, "unknown vdom -> 403", r)
api.vdom = "root"

# Threat feeds (FortiOS 7.2.1+): the CMDB object through the typed connector, the push and
# the entry list through the generic methods (fortigate-api 6.4 has no monitor wrappers for
# them; `Fortigate.post/get` send any path with the vdom and the Bearer token).
feeds = api.cmdb.system.external_resource
r = feeds.create({"name": "py-feed", "type": "address", "update-method": "push", "comments": "from python"})
check(r.ok and r.json()["mkey"] == "py-feed" and r.json()["path"] == "system", "create push threat feed py-feed", r)
items = feeds.get(name="py-feed")
check(len(items) == 1 and items[0]["type"] == "address" and items[0]["update-method"] == "push", "get the feed back")
r = feeds.create({"name": "f" * 36, "type": "address", "update-method": "push"})
check(r.status_code == 424 and r.json()["error"] == -1, "36-character feed name refused (424, -1)", r)
r = feeds.create({"name": "py-a9", "type": "address", "update-method": "push"})
check(r.ok, "feed py-a9", r)
r = addr.create({"name": "py-a9", "subnet": "10.50.0.9/32"})
check(r.status_code == 500 and r.json()["error"] == -5, "feed and address names share one namespace (500, -5)", r)
feeds.delete("py-a9")

DYNAMIC = "api/v2/monitor/system/external-resource/dynamic"
ENTRY_LIST = "api/v2/monitor/system/external-resource/entry-list?mkey=py-feed"
push = {"commands": [
    {"name": "py-feed", "command": "snapshot", "entries": ["10.70.0.1", "10.70.0.2", "10.70.0.3"]},
    {"name": "py-feed", "command": "remove", "entries": ["10.70.0.2"]},
    {"name": "py-feed", "command": "add", "entries": ["10.70.0.4", "10.70.1.0/24", "not-an-ip"]},
]}
r = api.fortigate.post(url=DYNAMIC, data=push)
check(r.ok and r.json()["status"] == "success", "push snapshot, remove, add in one request", r)
r = api.fortigate.get(url=ENTRY_LIST)
res = r.json()["results"]
listed = [(e["entry"], e["valid"]) for e in res["entries"]]
want = [("10.70.0.1", True), ("10.70.0.3", True), ("10.70.0.4", True), ("10.70.1.0/24", True), ("not-an-ip", False)]
check(r.ok and listed == want and res["valid_count"] == 4 and res["invalid_count"] == 1 and res["overflow"] is False, f"entry list -> {listed}", r)
r = api.fortigate.post(url=DYNAMIC, data={"commands": [{"name": "py-nope", "command": "add", "entries": ["10.70.0.9"]}]})
check(r.status_code == 424 and r.json()["status"] == "error", "push to a missing feed refused", r)
r = api.fortigate.post(url=DYNAMIC, data={"commands": [{"name": "py-feed", "command": "snapshot", "entries": ["10.70.0.8"]}]})
entries = [e["entry"] for e in api.fortigate.get(url=ENTRY_LIST).json()["results"]["entries"]]
check(r.ok and entries == ["10.70.0.8"], f"snapshot replaces the list -> {entries}", r)
r = feeds.delete("py-feed")
check(r.ok and not feeds.is_exist("py-feed"), "delete the feed", r)
r = api.fortigate.get(url=ENTRY_LIST)
check(r.status_code == 404, "entry list of a deleted feed -> 404", r)

# The low-level connector, as a context manager.
with FortiGate(host=HOST, port=PORT, token=TOKEN, verify=True, vdom="dmz") as fgt:
    data = fgt.get_results("api/v2/cmdb/firewall/address/py-dmz")
    check(len(data) == 1 and data[0]["subnet"] == "10.60.0.1 255.255.255.255", "FortiGate.get_results in dmz")

# A wrong token fails the login check.
bad = FortiGateAPI(host=HOST, port=PORT, token="not-the-token", verify=True)
try:
    bad.login()
    check(False, "wrong token must be refused")
except requests.HTTPError as e:
    check(e.response.status_code == 401, "wrong token -> 401 at login")

# Verification is really on: without the CA bundle the certificate is refused.
ca = os.environ.pop("REQUESTS_CA_BUNDLE")
try:
    FortiGateAPI(host=HOST, port=PORT, token=TOKEN, verify=True).login()
    check(False, "an untrusted certificate must be refused")
except requests.exceptions.SSLError:
    check(True, "certificate refused without the emulator CA")
os.environ["REQUESTS_CA_BUNDLE"] = ca

print("all fortigate-api checks passed")
