"""Checks the PAN-OS emulator with Palo Alto's own client, pan-python (pan.xapi).

Run by fw-sync/tests/vendor_panos.rs with the emulator's address in the environment:
PANOS_HOST, PANOS_PORT, PANOS_CA, PANOS_USER, PANOS_PASSWORD, PANOS_KEY, and for the
Panorama checks PANOS_PANORAMA_PORT and PANOS_PANORAMA_CA. Every step is asserted; any failure exits non-zero.
"""

import os
import ssl
import sys
import xml.etree.ElementTree as etree

import pan.xapi

HOST = os.environ["PANOS_HOST"]
CA = os.environ["PANOS_CA"]
USER = os.environ["PANOS_USER"]
PASSWORD = os.environ["PANOS_PASSWORD"]
KEY = os.environ["PANOS_KEY"]
DEVICE = "/config/devices/entry[@name='localhost.localdomain']"
VSYS = DEVICE + "/vsys/entry[@name='vsys1']"


def client(port, cafile=CA, **kw):
    ctx = ssl.create_default_context(cafile=cafile)
    return pan.xapi.PanXapi(hostname=HOST, port=port, ssl_context=ctx, timeout=10, **kw)


def expect_error(fn, *needles):
    try:
        fn()
    except pan.xapi.PanXapiError as e:
        for n in needles:
            assert n in str(e), "%r not in %r" % (n, str(e))
        return str(e)
    raise AssertionError("expected PanXapiError containing %r" % (needles,))


def step(name):
    print("ok:", name, flush=True)


def firewall(port):
    xapi = client(port, api_username=USER, api_password=PASSWORD)
    assert xapi.keygen() == KEY
    step("keygen")
    expect_error(lambda: client(port, api_username=USER, api_password="wrong").keygen(), "403")
    step("keygen with a bad password refused")

    a1 = VSYS + "/address/entry[@name='py-a1']"
    xapi.set(xpath=a1, element="<ip-netmask>10.9.0.1/32</ip-netmask><description>from pan-python</description>")
    assert (xapi.status, xapi.status_code) == ("success", "20"), xapi.xml_document
    xapi.get(xpath=a1)
    assert xapi.status_code == "19" and xapi.element_result.get("total-count") == "1", xapi.xml_document
    assert "10.9.0.1/32" in xapi.xml_result()
    step("set and get an address (candidate)")
    expect_error(lambda: xapi.show(xpath=a1), "No such node")
    step("show reads the running config: not there before a commit")

    xapi.edit(xpath=a1, element="<entry name='py-a1'><ip-netmask>10.9.0.2/32</ip-netmask></entry>")
    xapi.get(xpath=a1)
    assert "10.9.0.2/32" in xapi.xml_result() and "description" not in xapi.xml_result(), xapi.xml_result()
    step("edit replaces the node")
    expect_error(lambda: xapi.set(xpath=VSYS + "/address/entry[@name='%s']" % ("x" * 64), element="<ip-netmask>10.9.0.3</ip-netmask>"), "not a valid name")
    assert xapi.status_code == "12", xapi.status_code
    step("a name over 63 characters is code 12")

    g = VSYS + "/address-group/entry[@name='py-g']"
    multi = (
        "<multi-config>"
        "<set id=\"1\" xpath=\"%s\"><ip-netmask>10.9.0.4/32</ip-netmask></set>"
        "<set id=\"2\" xpath=\"%s\"><static><member>py-a1</member><member>py-a2</member></static></set>"
        "</multi-config>" % (VSYS + "/address/entry[@name='py-a2']", g)
    )
    xapi.multi_config(element=multi, strict=True)
    assert xapi.status == "success" and 'id="1"' in xapi.status_detail and 'id="2"' in xapi.status_detail, xapi.xml_document
    step("strict multi-config with nested responses")
    bad = "<multi-config><set id=\"1\" xpath=\"%s\"><ip-netmask>10.9.0.5/32</ip-netmask></set><delete id=\"2\" xpath=\"%s\"/></multi-config>" % (
        VSYS + "/address/entry[@name='py-a3']", a1)
    expect_error(lambda: xapi.multi_config(element=bad, strict=True), 'code="10" id="2"')
    xapi.get(xpath=VSYS + "/address/entry[@name='py-a3']")
    assert xapi.status_code == "7", "strict multi-config must be all or nothing"
    step("a failing strict multi-config applies nothing (code 10: still referenced)")

    xapi.get(xpath=VSYS + "/address/entry[@name='nope']")
    assert (xapi.status, xapi.status_code) == ("success", "7") and not xapi.xml_result(), xapi.xml_document
    step("get of a missing node is code 7 with an empty result")

    xapi.commit(cmd="<commit></commit>", sync=True, interval=0.05, timeout=20)
    job = xapi.element_root.find("./result/job")
    assert job.find("status").text == "FIN" and job.find("result").text == "OK", xapi.xml_document
    step("commit(sync=True) polled job %s to FIN/OK" % job.find("id").text)
    xapi.show(xpath=g)
    members = [m.text for m in xapi.element_result.findall("./entry/static/member")]
    assert members == ["py-a1", "py-a2"], members
    step("show reads the committed group")
    xapi.commit(cmd="<commit></commit>")
    assert xapi.status_detail == "There are no changes to commit.", xapi.status_detail
    step("nothing to commit")
    xapi.op(cmd='show jobs id "%s"' % job.find("id").text, cmd_xml=True)
    assert xapi.element_root.find("./result/job/type").text == "Commit"
    step("op show jobs")

    xapi.delete(xpath=g + "/static/member[text()='py-a2']")
    xapi.delete(xpath=g + "/static/member[text()='py-a1']")
    xapi.commit(cmd="<commit></commit>", sync=True, interval=0.05, timeout=20)
    job = xapi.element_root.find("./result/job")
    assert job.find("result").text == "FAIL", xapi.xml_document
    assert "missing 'member'" in xapi.status_detail, xapi.status_detail
    step("a static group without members fails the commit: " + xapi.status_detail.splitlines()[0])
    xapi.delete(xpath=g)
    xapi.commit(cmd="<commit></commit>", sync=True, interval=0.05, timeout=20)
    assert xapi.element_root.find("./result/job/result").text == "OK"
    step("fixed and committed")

    reg = ('<uid-message><version>1.0</version><type>update</type><payload><register>'
           '<entry ip="10.9.1.%d"><tag><member timeout="3600">py-tag</member></tag></entry>'
           '</register></payload></uid-message>')
    for i in range(1, 4):
        xapi.user_id(cmd=reg % i)
    assert xapi.status == "success"
    expect_error(lambda: xapi.user_id(cmd=reg % 1), "already exists, ignore")
    step("user-id register (again: benign per-entry message)")
    show = '<show><object><registered-ip><tag><entry name="py-tag"/></tag><limit>2</limit><start-point>%d</start-point></registered-ip></object></show>'
    ips = []
    start = 1
    while True:
        xapi.op(cmd=show % start)
        page = [e.get("ip") for e in xapi.element_result.findall("./entry")]
        ips += page
        if len(page) < 2:
            break
        start += 2
    assert ips == ["10.9.1.1", "10.9.1.2", "10.9.1.3"], ips
    step("registered-ip read back page by page")
    unreg = reg.replace("register>", "unregister>") % 2
    xapi.user_id(cmd=unreg)
    expect_error(lambda: xapi.user_id(cmd=unreg), "does not exist, ignore unreg")
    xapi.op(cmd=show % 1)
    assert [e.get("ip") for e in xapi.element_result.findall("./entry")] == ["10.9.1.1", "10.9.1.3"]
    step("user-id unregister")

    bad = client(port, api_key="LUFRPTnot-the-key")
    expect_error(lambda: bad.op(cmd="<show><jobs><all/></jobs></show>"), "403")
    step("a bad key is refused")
    expect_error(lambda: xapi.op(cmd="<show><nonsense/></show>"), "unexpected")
    assert xapi.status_code == "17"
    step("an unknown op command is code 17")


def panorama(port):
    xapi = client(port, cafile=os.environ["PANOS_PANORAMA_CA"], api_key=KEY)
    dg = DEVICE + "/device-group/entry[@name='py-dg']"
    xapi.set(xpath=dg + "/address/entry[@name='py-p1']", element="<ip-netmask>10.9.2.1/32</ip-netmask>")
    xapi.set(xpath=dg + "/address-group/entry[@name='py-pg']", element="<static><member>py-p1</member></static>")
    xapi.commit(cmd="<commit></commit>", sync=True, interval=0.05, timeout=20)
    assert xapi.element_root.find("./result/job/result").text == "OK", xapi.xml_document
    cmd = '<commit-all><shared-policy><device-group><entry name="py-dg"/></device-group></shared-policy></commit-all>'
    xapi.commit(cmd=cmd, action="all", sync=True, interval=0.05, timeout=20)
    job = xapi.element_root.find("./result/job")
    assert job.find("type").text == "CommitAll" and job.find("result").text == "OK", xapi.xml_document
    step("Panorama: device-group objects committed and pushed with commit-all")


firewall(int(os.environ["PANOS_PORT"]))
if os.environ.get("PANOS_PANORAMA_PORT"):
    panorama(int(os.environ["PANOS_PANORAMA_PORT"]))
print("all pan-python checks passed")
