/*
 * sock_unlinked: unix sockets whose bound path was unlinked stay
 * unlinked.
 *
 * State: a stream listener bound to unl.listen, with a client (held by a
 * forked child) connected and accepted, then unl.listen unlinked; a
 * datagram socket bound to unl.dgram with a client connected to it by
 * name, one datagram queued, then unl.dgram unlinked; a stream socket
 * bound to unl.bound (not listening), unlinked; unl.live, a listener
 * whose path stays.
 * Verified: unl.listen, unl.dgram and unl.bound do not exist (a socket
 * file coming back would let other programs connect); unl.live does;
 * every socket still has its name (getsockname); the listener still
 * listens; the accepted connection carries data both ways; the datagram
 * socket holds its datagram and receives from its connected client.
 */
#include "zdtm.h"

#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

static int lsn, acc, dsrv, dcli, bound, live;
static pid_t child;
static struct sockaddr_un addr[4];
static const char *names[4] = { "unl.listen", "unl.dgram", "unl.bound", "unl.live" };

static socklen_t name_len(const struct sockaddr_un *a)
{
	return offsetof(struct sockaddr_un, sun_path) + strlen(a->sun_path) + 1;
}

static int bound_socket(int type, int i)
{
	char p[4096];
	int s = socket(AF_UNIX, type, 0);

	zdtm_path(p, sizeof(p), names[i]);
	if (strlen(p) >= sizeof(addr[i].sun_path))
		zdtm_die("path %s is too long for a unix socket", p);
	addr[i].sun_family = AF_UNIX;
	strcpy(addr[i].sun_path, p);
	unlink(p);
	if (s < 0 || bind(s, (struct sockaddr *)&addr[i], name_len(&addr[i])))
		zdtm_die("bind %s: %s", p, strerror(errno));
	return s;
}

static void child_main(int cli)
{
	char b[16];

	/* Answers every 4-byte message with its reverse. */
	for (;;) {
		ssize_t r = recv(cli, b, 4, MSG_WAITALL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r != 4)
			_exit(r == 0 ? 0 : 3);
		char o[4] = { b[3], b[2], b[1], b[0] };
		if (send(cli, o, 4, 0) != 4)
			_exit(4);
	}
}

static void check_name(int s, int i)
{
	struct sockaddr_un a;
	socklen_t len = sizeof(a);

	zdtm_check(getsockname(s, (struct sockaddr *)&a, &len) == 0, "getsockname %s: %s", names[i], strerror(errno));
	zdtm_check(len == name_len(&addr[i]) && !strcmp(a.sun_path, addr[i].sun_path), "%s is now named %.*s", names[i],
		   (int)(len - offsetof(struct sockaddr_un, sun_path)), a.sun_path);
}

static void sabotage(void)
{
	int fd;

	switch (zdtm_sabotage) {
	case 1: /* the listener's socket file came back */
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		bind(fd, (struct sockaddr *)&addr[0], name_len(&addr[0]));
		break;
	case 2: /* the datagram socket's file came back */
		fd = open(addr[1].sun_path, O_CREAT | O_WRONLY, 0600);
		close(fd);
		break;
	case 3: /* the live socket's file was lost */
		unlink(addr[3].sun_path);
		break;
	}
}

int main(void)
{
	char b[16];
	int cli, v;
	socklen_t len = sizeof(v);
	struct stat st;

	zdtm_init();
	lsn = bound_socket(SOCK_STREAM, 0);
	if (listen(lsn, 4))
		zdtm_die("listen: %s", strerror(errno));
	cli = socket(AF_UNIX, SOCK_STREAM, 0);
	if (cli < 0 || connect(cli, (struct sockaddr *)&addr[0], name_len(&addr[0])))
		zdtm_die("connect: %s", strerror(errno));
	acc = accept(lsn, NULL, NULL);
	if (acc < 0)
		zdtm_die("accept: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0) {
		close(lsn), close(acc);
		child_main(cli);
	}
	zdtm_kid(child);
	close(cli);

	dsrv = bound_socket(SOCK_DGRAM, 1);
	dcli = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (dcli < 0 || connect(dcli, (struct sockaddr *)&addr[1], name_len(&addr[1])) || send(dcli, "queued", 6, 0) != 6)
		zdtm_die("datagram client: %s", strerror(errno));
	bound = bound_socket(SOCK_STREAM, 2);
	live = bound_socket(SOCK_STREAM, 3);
	if (listen(live, 4))
		zdtm_die("listen: %s", strerror(errno));
	for (int i = 0; i < 3; i++)
		if (unlink(addr[i].sun_path))
			zdtm_die("unlink %s: %s", addr[i].sun_path, strerror(errno));

	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (int i = 0; i < 3; i++)
		zdtm_check(lstat(addr[i].sun_path, &st) < 0 && errno == ENOENT, "%s exists again (unlinked at setup)",
			   names[i]);
	zdtm_check(lstat(addr[3].sun_path, &st) == 0 && S_ISSOCK(st.st_mode), "%s is gone or not a socket", names[3]);
	check_name(lsn, 0);
	check_name(dsrv, 1);
	check_name(bound, 2);
	check_name(live, 3);
	zdtm_check(getsockopt(lsn, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0 && v == 1, "the listener no longer listens");
	zdtm_check(send(acc, "abcd", 4, 0) == 4, "send: %s", strerror(errno));
	{
		struct pollfd pf = { .fd = acc, .events = POLLIN };
		zdtm_check(poll(&pf, 1, 10000) == 1, "the child did not answer within 10 s");
	}
	zdtm_check(recv(acc, b, 4, MSG_WAITALL) == 4 && !memcmp(b, "dcba", 4), "the child's answer differs");
	zdtm_check(recv(dsrv, b, sizeof(b), MSG_DONTWAIT) == 6 && !memcmp(b, "queued", 6),
		   "the queued datagram is lost: %s", strerror(errno));
	zdtm_check(send(dcli, "again", 5, 0) == 5, "the datagram client cannot send: %s", strerror(errno));
	zdtm_check(recv(dsrv, b, sizeof(b), MSG_DONTWAIT) == 5 && !memcmp(b, "again", 5),
		   "the datagram socket did not receive from its client: %s", strerror(errno));
	zdtm_pass();
}
