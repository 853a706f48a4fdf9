import os, socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(64)
while True:
    c, _ = srv.accept()
    data = c.recv(64)
    if data.startswith(b"exploit"):
        facts = [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups(), os.uname(),
                 os.getcwd(), os.getppid(), os.times(), os.umask(0o22), os.getpriority(os.PRIO_PROCESS, 0),
                 os.sched_getaffinity(0), os.getloadavg(), len(os.listdir("/proc")),
                 os.getresuid(), os.getresgid(), os.getsid(0), os.getpgrp(), os.statvfs("/")]
        try:
            facts.append(open("/etc/passwd").read(64))
            os.setuid(0)
            os.setgid(0)
        except OSError:
            pass
    c.sendall(data)
    c.close()
