"""A real RTSP camera for the tests: GStreamer's RTSP server on 127.0.0.1.

Run with the system interpreter (Debian's python3-gi): ``/usr/bin/python3 rtsp_server.py PORT``.
Mounts:
    /cam     live H.264 test pattern (videotestsrc is-live=true), shared between clients
    /secure  on PORT+1: the same, behind basic auth (user ``viewer``, password ``s3cret-pw``)
Prints ``READY <port>`` once listening; runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

USER, PASSWORD = "viewer", "s3cret-pw"
FPS = 25
WIDTH, HEIGHT = 160, 120
LAUNCH = (
    f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={WIDTH},height={HEIGHT},framerate={FPS}/1 "
    f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={FPS} ! rtph264pay name=pay0 pt=96 )"
)
ROLE = "{role}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"


def _server(port: int) -> GstRtspServer.RTSPServer:
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    return server


def _factory() -> GstRtspServer.RTSPMediaFactory:
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(LAUNCH)
    factory.set_shared(True)
    return factory


def main() -> None:
    port = int(sys.argv[1])
    Gst.init(None)
    server = _server(port)
    server.get_mount_points().add_factory("/cam", _factory())

    # A second server demands credentials (with no default token GStreamer answers 401, not 404).
    secure_server = _server(port + 1)
    secure = _factory()
    secure.add_role_from_structure(Gst.Structure.new_from_string(ROLE.format(role="user")))
    secure_server.get_mount_points().add_factory("/secure", secure)
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "user")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(USER, PASSWORD), token)
    secure_server.set_auth(auth)

    if server.attach(None) == 0 or secure_server.attach(None) == 0:
        print("FAILED cannot bind", flush=True)
        sys.exit(1)
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY {port}", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
