"""Runs a command in a process where the kernel refuses IPv6 sockets (EAFNOSUPPORT), as on a
host booted with ipv6.disable=1. Usage: without_ipv6.py PROGRAM [ARGS...]

Needs Debian's python3-seccomp (installed by tests/run.sh)."""

import errno
import os
import socket
import sys

import seccomp

rules = seccomp.SyscallFilter(seccomp.ALLOW)
rules.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, socket.AF_INET6))
rules.load()
os.execvp(sys.argv[1], sys.argv[1:])
