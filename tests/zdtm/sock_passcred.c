/*
 * sock_passcred: a unix datagram socket with SO_PASSCRED holding a
 * message (its sender's credentials travel with it). A checkpoint must
 * refuse it by name (the restore could not send the message again with
 * its sender's credentials before that sender exists) and leave the
 * program running.
 * Verified: the message and its credentials (this process's pid, uid,
 * gid) are still there.
 */
#include "zdtm.h"

#include <sys/socket.h>
#include <sys/un.h>

static int sv[2];

int main(void)
{
	char buf[16], cbuf[CMSG_SPACE(sizeof(struct ucred))];
	struct iovec iov = { buf, sizeof(buf) };
	struct msghdr m = { 0 };
	struct cmsghdr *c;
	struct ucred *u = NULL;
	int one = 1;
	ssize_t r;

	zdtm_init();
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) || setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) ||
	    send(sv[0], "cred", 4, 0) != 4)
		zdtm_die("socketpair/SO_PASSCRED/send: %s", strerror(errno));
	zdtm_ready();
	zdtm_wait();
	if (zdtm_sabotage == 1)
		recv(sv[1], buf, sizeof(buf), MSG_DONTWAIT);
	m.msg_iov = &iov;
	m.msg_iovlen = 1;
	m.msg_control = cbuf;
	m.msg_controllen = sizeof(cbuf);
	r = recvmsg(sv[1], &m, MSG_DONTWAIT);
	zdtm_check(r == 4 && !memcmp(buf, "cred", 4), "message: %zd bytes (%s)", r, r < 0 ? strerror(errno) : "");
	for (c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS)
			u = (struct ucred *)CMSG_DATA(c);
	zdtm_check(u && u->pid == getpid() && u->uid == getuid() && u->gid == getgid(), "credentials %d:%d:%d",
		   u ? u->pid : -1, u ? (int)u->uid : -1, u ? (int)u->gid : -1);
	zdtm_pass();
}
