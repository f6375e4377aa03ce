/*
 * sock_accept_queue: unix listeners with connections waiting in their
 * accept queues.
 *
 * State: a stream listener (a path in the work dir, backlog 8) with three
 * clients connected and not accepted, the second one bound to an abstract
 * name, the third held by a forked child; a seqpacket listener (abstract)
 * with one client waiting. No client sent anything yet.
 * Verified: accept hands the connections over in the order they came
 * (each accepted end talks to its own client, both ways; the second's
 * peer name is its client's), then none is left (EAGAIN); the clients'
 * peer names are the listeners'; the seqpacket connection keeps message
 * boundaries.
 */
#include "zdtm.h"

#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

static int lsn, sq, cli[3], sqcli, ctl[2], back[2];
static struct sockaddr_un la, sa, c2a;
static socklen_t sl, c2l;
static pid_t child;

static int connect_to(int type, const struct sockaddr_un *a, socklen_t l)
{
	int s = socket(AF_UNIX, type, 0);
	if (s < 0 || connect(s, (const struct sockaddr *)a, l))
		zdtm_die("connect: %s", strerror(errno));
	return s;
}

/* The child holds the third client: it answers what arrives with "c3". */
static void child_main(void)
{
	char c[8];
	ssize_t r;
	close(ctl[1]);
	close(back[0]);
	/* Set up: the parent's view of this process is final from here. */
	if (write(back[1], "r", 1) != 1)
		_exit(2);
	while (read(ctl[0], c, 1) < 0 && errno == EINTR)
		;
	r = recv(cli[2], c, sizeof(c), MSG_DONTWAIT);
	if (r != 2 || memcmp(c, "s3", 2))
		_exit(3);
	if (send(cli[2], "c3", 2, 0) != 2)
		_exit(4);
	_exit(0);
}

static void talk(int acc, int c, const char *what)
{
	char buf[8];
	zdtm_check(send(acc, what, 2, 0) == 2 && recv(c, buf, sizeof(buf), MSG_DONTWAIT) == 2 && !memcmp(buf, what, 2),
		   "accepted connection %s does not reach its client", what);
	zdtm_check(send(c, "ok", 2, 0) == 2 && recv(acc, buf, sizeof(buf), MSG_DONTWAIT) == 2 && !memcmp(buf, "ok", 2),
		   "client %s does not reach its accepted end", what);
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* the first connection is taken early */
		close(accept(lsn, NULL, NULL));
		break;
	case 2: /* one more connection waits */
		connect_to(SOCK_STREAM, &la, sizeof(la));
		break;
	}
}

int main(void)
{
	struct sockaddr_un a;
	socklen_t l;
	int acc, status;
	char buf[8];

	zdtm_init();
	memset(&la, 0, sizeof(la));
	la.sun_family = AF_UNIX;
	zdtm_path(la.sun_path, sizeof(la.sun_path), "acc.sock");
	unlink(la.sun_path);
	lsn = socket(AF_UNIX, SOCK_STREAM, 0);
	if (lsn < 0 || bind(lsn, (struct sockaddr *)&la, sizeof(la)) || listen(lsn, 8))
		zdtm_die("listener: %s", strerror(errno));
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1, "lpm-zdtm-accq-%d", getpid());
	sl = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(sa.sun_path + 1);
	sq = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	if (sq < 0 || bind(sq, (struct sockaddr *)&sa, sl) || listen(sq, 4))
		zdtm_die("seqpacket listener: %s", strerror(errno));

	cli[0] = connect_to(SOCK_STREAM, &la, sizeof(la));
	memset(&c2a, 0, sizeof(c2a));
	c2a.sun_family = AF_UNIX;
	snprintf(c2a.sun_path + 1, sizeof(c2a.sun_path) - 1, "lpm-zdtm-accq-c2-%d", getpid());
	c2l = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(c2a.sun_path + 1);
	cli[1] = socket(AF_UNIX, SOCK_STREAM, 0);
	if (cli[1] < 0 || bind(cli[1], (struct sockaddr *)&c2a, c2l) || connect(cli[1], (struct sockaddr *)&la, sizeof(la)))
		zdtm_die("second client: %s", strerror(errno));
	cli[2] = connect_to(SOCK_STREAM, &la, sizeof(la));
	sqcli = connect_to(SOCK_SEQPACKET, &sa, sl);
	if (pipe(ctl) || pipe(back))
		zdtm_die("pipe: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0)
		child_main();
	zdtm_kid(child);
	close(cli[2]);
	close(ctl[0]);
	close(back[1]);
	/* Ready only once the child has closed what it does not keep: a
	 * checkpoint before that would see its copies of the pipes. */
	{
		char c;
		ssize_t r;
		while ((r = read(back[0], &c, 1)) < 0 && errno == EINTR)
			;
		if (r != 1)
			zdtm_die("the child never got ready: %s", r < 0 ? strerror(errno) : "it exited");
	}
	if (fcntl(lsn, F_SETFL, O_NONBLOCK) || fcntl(sq, F_SETFL, O_NONBLOCK))
		zdtm_die("fcntl: %s", strerror(errno));

	zdtm_ready();
	zdtm_wait();
	sabotage();

	l = sizeof(a);
	zdtm_check(!getpeername(cli[0], (struct sockaddr *)&a, &l) && !strcmp(a.sun_path, la.sun_path), "client 1 peer %s",
		   a.sun_path);
	acc = accept(lsn, NULL, NULL);
	zdtm_check(acc >= 0, "accept 1: %s", strerror(errno));
	talk(acc, cli[0], "s1");
	acc = accept(lsn, (struct sockaddr *)&a, &(socklen_t){ sizeof(a) });
	zdtm_check(acc >= 0, "accept 2: %s", strerror(errno));
	zdtm_check(!memcmp(&a, &c2a, c2l), "accept 2 is not the named client's connection");
	talk(acc, cli[1], "s2");
	acc = accept(lsn, NULL, NULL);
	zdtm_check(acc >= 0, "accept 3: %s", strerror(errno));
	zdtm_check(send(acc, "s3", 2, 0) == 2 && write(ctl[1], "v", 1) == 1, "tell the child: %s", strerror(errno));
	zdtm_check(waitpid(child, &status, 0) == child && WIFEXITED(status) && !WEXITSTATUS(status),
		   "the child's client failed: status %#x", status);
	zdtm_nkids = 0;
	zdtm_check(recv(acc, buf, sizeof(buf), MSG_DONTWAIT) == 2 && !memcmp(buf, "c3", 2), "no answer from client 3");
	zdtm_check(accept(lsn, NULL, NULL) < 0 && errno == EAGAIN, "a fourth connection waits");

	acc = accept(sq, NULL, NULL);
	zdtm_check(acc >= 0, "seqpacket accept: %s", strerror(errno));
	zdtm_check(send(sqcli, "a", 1, 0) == 1 && send(sqcli, "bc", 2, 0) == 2, "seqpacket send: %s", strerror(errno));
	zdtm_check(recv(acc, buf, sizeof(buf), MSG_DONTWAIT) == 1 && recv(acc, buf, sizeof(buf), MSG_DONTWAIT) == 2,
		   "seqpacket boundaries");
	zdtm_check(accept(sq, NULL, NULL) < 0 && errno == EAGAIN, "a second seqpacket connection waits");
	zdtm_pass();
}
