"""SIP callee of the related-flows lab: answers one INVITE, then sends media.

Usage: sip_uas.py ADDR COUNT

Listens on ADDR:5060/udp and prints "READY". On an INVITE with SDP it reads
the offer's media address and port (as the firewall's SIP helper rewrote
them), answers 200 OK with its own SDP (media on ADDR:30000), prints
"INVITE media=IP:PORT from=IP:PORT" and "ANSWERED". After "GO" on stdin it
sends COUNT RTP-like datagrams (12-byte RTP header, sequence numbers 1..COUNT)
from ADDR:30000 to the offered media address, 20 ms apart, and prints
"RTP sent=COUNT". Exits after that.
"""

import re
import socket
import struct
import sys
import time

MEDIA_PORT = 30000


def out(line):
    print(line, flush=True)


def header(msg, name):
    m = re.search(r"^" + name + r":\s*(.*?)\r$", msg, re.M | re.I)
    return m.group(1) if m else ""


def main():
    addr, count = sys.argv[1], int(sys.argv[2])
    sig = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sig.bind((addr, 5060))
    sig.settimeout(60)
    out("READY")
    stage = "invite"
    try:
        while True:
            raw, peer = sig.recvfrom(65535)
            msg = raw.decode(errors="replace")
            if msg.startswith("INVITE "):
                break
        media_ip = re.search(r"^c=IN IP4 (\S+)\r$", msg, re.M).group(1)
        media_port = int(re.search(r"^m=audio (\d+) ", msg, re.M).group(1))
        out("INVITE media=%s:%d from=%s:%d" % (media_ip, media_port, peer[0], peer[1]))
        sdp = (
            "v=0\r\n"
            "o=callee 2 2 IN IP4 %s\r\n"
            "s=lab\r\n"
            "c=IN IP4 %s\r\n"
            "t=0 0\r\n"
            "m=audio %d RTP/AVP 0\r\n"
            "a=rtpmap:0 PCMU/8000\r\n" % (addr, addr, MEDIA_PORT)
        )
        to = header(msg, "To")
        reply = (
            "SIP/2.0 200 OK\r\n"
            "Via: %s\r\n"
            "From: %s\r\n"
            "To: %s;tag=callee1\r\n"
            "Call-ID: %s\r\n"
            "CSeq: %s\r\n"
            "Contact: <sip:callee@%s:5060>\r\n"
            "Content-Type: application/sdp\r\n"
            "Content-Length: %d\r\n"
            "\r\n%s"
            % (
                header(msg, "Via"),
                header(msg, "From"),
                to,
                header(msg, "Call-ID"),
                header(msg, "CSeq"),
                addr,
                len(sdp),
                sdp,
            )
        )
        sig.sendto(reply.encode(), peer)
        out("ANSWERED")
        stage = "wait"
        if sys.stdin.readline().strip() != "GO":
            raise RuntimeError("no GO on stdin")
        stage = "media"
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp.bind((addr, MEDIA_PORT))
        for seq in range(1, count + 1):
            rtp.sendto(struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1AB) + b"\xff" * 160, (media_ip, media_port))
            time.sleep(0.02)
        out("RTP sent=%d" % count)
    except Exception as e:  # noqa: BLE001 - every failure is reported
        out("ERROR stage=%s what=%s" % (stage, repr(e)))
        sys.exit(1)


if __name__ == "__main__":
    main()
