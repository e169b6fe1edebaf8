"""FTP server of the related-flows lab: pyftpdlib serving ROOT read-only to
anonymous users on ADDR:21.

Usage: ftp_server.py ADDR ROOT

Prints "READY" once it listens; exits when its stdin closes. Active mode
connects when the transfer command comes (as vsftpd and most servers do),
not when PORT arrives as pyftpdlib does by default: the test holds the data
connection back between PORT and RETR. PORT to an address other than the
control connection's peer is refused (pyftpdlib's default), so PORT works
only if the firewall's FTP helper rewrote the client's address to the SNAT
address.
"""

import logging
import os
import socket
import sys
import threading

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import ActiveDTP, FTPHandler
from pyftpdlib.servers import FTPServer


class DeferredActiveDTP(ActiveDTP):
    """An active data connection opened for a transfer already answered
    with 150: no extra "200 Active data connection established" reply."""

    timeout = 10

    def handle_connect(self):
        self.del_channel()
        if self._idler is not None and not self._idler.cancelled:
            self._idler.cancel()
        if not self.cmd_channel.connected:
            return self.close()
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            raise socket.error(err)
        handler = self.cmd_channel.dtp_handler(self.socket, self.cmd_channel)
        self.cmd_channel.data_channel = handler
        # The socket now belongs to the handler. pyftpdlib keeps this
        # connector as the session's _dtp_connector and closes it on the
        # next PORT or RETR; its close() unregisters the fd *number* it
        # cached, which by then may be another session's new PASV listener
        # (the kernel reuses the lowest free fd): that listener would never
        # accept. Forget the connector and its fd so it cannot do that.
        self.cmd_channel._dtp_connector = None
        self._fileno = None
        self.cmd_channel._on_dtp_connection()


class Handler(FTPHandler):
    active_dtp = DeferredActiveDTP
    timeout = 300
    _port_target = None

    def _make_eport(self, ip, port):
        remote_ip = self.remote_ip
        if remote_ip.startswith("::ffff:"):
            remote_ip = remote_ip[7:]
        if ip != remote_ip:
            self.respond_w_warning(
                "501 Rejected data connection to foreign address %s:%s." % (ip, port)
            )
            return
        if port < 1024:
            self.respond_w_warning('501 PORT against the privileged port "%s" refused.' % port)
            return
        self._port_target = (ip, port)
        self.respond("200 PORT command successful; connecting on transfer.")

    def ftp_PASV(self, line):
        self._port_target = None
        return FTPHandler.ftp_PASV(self, line)

    def ftp_RETR(self, file):
        if self._port_target is not None:
            ip, port = self._port_target
            self._port_target = None
            FTPHandler._make_eport(self, ip, port)
        return FTPHandler.ftp_RETR(self, file)


def main():
    addr, root = sys.argv[1], sys.argv[2]
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    auth = DummyAuthorizer()
    auth.add_anonymous(root)
    Handler.authorizer = auth
    server = FTPServer((addr, 21), Handler)
    print("READY", flush=True)

    def watch_stdin():
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    server.serve_forever(timeout=0.5)


if __name__ == "__main__":
    main()
