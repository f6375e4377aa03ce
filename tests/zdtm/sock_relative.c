/*
 * sock_relative: unix sockets bound to paths relative to the working
 * directory at bind time.
 *
 * State: working directory = the work dir; a stream listener bound to
 * "rel.sock" with an accepted connection (data queued both ways) from a
 * client that connected by that relative name; a datagram socket bound to
 * "rel.dg" holding a datagram from a socket bound to "rel.snd".
 * Verified: the names as getsockname and getpeername give them (relative,
 * as bound), the listener's name in /proc/net/unix, the queued bytes, the
 * datagram's source name; a new connection by the relative name.
 */
#include "zdtm.h"

#include <sys/socket.h>
#include <sys/un.h>

static int lsn, acc, cli, dg, snd;
static char buf[256];

static void rel(struct sockaddr_un *a, const char *name)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	snprintf(a->sun_path, sizeof(a->sun_path), "%s", name);
	unlink(name);
}

static int bound(int type, const char *name)
{
	struct sockaddr_un a;
	int s = socket(AF_UNIX, type, 0);
	rel(&a, name);
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)))
		zdtm_die("bind %s: %s", name, strerror(errno));
	return s;
}

static void check_name(int fd, int peer, const char *want, const char *what)
{
	struct sockaddr_un a;
	socklen_t l = sizeof(a);
	int r;
	memset(&a, 0, sizeof(a));
	r = peer ? getpeername(fd, (struct sockaddr *)&a, &l) : getsockname(fd, (struct sockaddr *)&a, &l);
	zdtm_check(!r && !strcmp(a.sun_path, want), "%s: name \"%s\", expected \"%s\"", what, a.sun_path, want);
}

/* /proc/net/unix lists a socket bound to name, as it was given. */
static int listed(const char *name)
{
	static char text[1 << 16];
	size_t off = 0;
	ssize_t r;
	int fd = open("/proc/self/net/unix", O_RDONLY);
	char want[64];
	if (fd < 0)
		return 0;
	while (off < sizeof(text) - 1 && (r = read(fd, text + off, sizeof(text) - 1 - off)) > 0)
		off += r;
	close(fd);
	text[off] = 0;
	snprintf(want, sizeof(want), " %s\n", name);
	return strstr(text, want) != NULL;
}

static void sabotage(void)
{
	struct sockaddr_un a;
	switch (zdtm_sabotage) {
	case 1: /* the listener is bound to an absolute path instead */
		close(lsn);
		lsn = socket(AF_UNIX, SOCK_STREAM, 0);
		memset(&a, 0, sizeof(a));
		a.sun_family = AF_UNIX;
		zdtm_path(a.sun_path, sizeof(a.sun_path), "abs.sock");
		bind(lsn, (struct sockaddr *)&a, sizeof(a));
		listen(lsn, 4);
		break;
	case 2: /* the datagram is gone */
		recv(dg, buf, sizeof(buf), MSG_DONTWAIT);
		break;
	}
}

int main(void)
{
	struct sockaddr_un a;
	char dir[200], *slash;
	socklen_t l;
	ssize_t r;
	int c;

	zdtm_init();
	zdtm_path(dir, sizeof(dir), "x");
	slash = strrchr(dir, '/');
	if (slash)
		*slash = 0;
	if (chdir(dir))
		zdtm_die("chdir %s: %s", dir, strerror(errno));
	lsn = bound(SOCK_STREAM, "rel.sock");
	if (listen(lsn, 4))
		zdtm_die("listen: %s", strerror(errno));
	cli = socket(AF_UNIX, SOCK_STREAM, 0);
	memset(&a, 0, sizeof(a));
	a.sun_family = AF_UNIX;
	strcpy(a.sun_path, "rel.sock");
	if (cli < 0 || connect(cli, (struct sockaddr *)&a, sizeof(a)))
		zdtm_die("connect: %s", strerror(errno));
	acc = accept(lsn, NULL, NULL);
	if (acc < 0 || send(acc, "to client", 9, 0) != 9 || send(cli, "to server", 9, 0) != 9)
		zdtm_die("accept/send: %s", strerror(errno));
	dg = bound(SOCK_DGRAM, "rel.dg");
	snd = bound(SOCK_DGRAM, "rel.snd");
	strcpy(a.sun_path, "rel.dg");
	if (sendto(snd, "hello", 5, 0, (struct sockaddr *)&a, sizeof(a)) != 5)
		zdtm_die("sendto: %s", strerror(errno));

	zdtm_ready();
	zdtm_wait();
	sabotage();

	check_name(lsn, 0, "rel.sock", "listener");
	check_name(acc, 0, "rel.sock", "accepted end");
	check_name(cli, 1, "rel.sock", "client's peer");
	check_name(dg, 0, "rel.dg", "datagram socket");
	check_name(snd, 0, "rel.snd", "sender");
	zdtm_check(listed("rel.sock"), "/proc/net/unix does not list rel.sock");
	r = recv(cli, buf, sizeof(buf), MSG_DONTWAIT);
	zdtm_check(r == 9 && !memcmp(buf, "to client", 9), "client read %zd bytes", r);
	r = recv(acc, buf, sizeof(buf), MSG_DONTWAIT);
	zdtm_check(r == 9 && !memcmp(buf, "to server", 9), "server read %zd bytes", r);
	l = sizeof(a);
	memset(&a, 0, sizeof(a));
	r = recvfrom(dg, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&a, &l);
	zdtm_check(r == 5 && !memcmp(buf, "hello", 5) && !strcmp(a.sun_path, "rel.snd"), "datagram: %zd bytes from \"%s\"",
		   r, a.sun_path);
	c = socket(AF_UNIX, SOCK_STREAM, 0);
	memset(&a, 0, sizeof(a));
	a.sun_family = AF_UNIX;
	strcpy(a.sun_path, "rel.sock");
	zdtm_check(c >= 0 && !connect(c, (struct sockaddr *)&a, sizeof(a)), "connect by the relative name: %s",
		   strerror(errno));
	zdtm_pass();
}
