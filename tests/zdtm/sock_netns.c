/*
 * sock_netns: a tree in its own network namespace (run under
 * `unshare --net`), lo up, a TCP listener on 127.0.0.1:7777 inside it, a
 * forked child connected to it with data queued both ways, and a UDP
 * socket bound to 127.0.0.1:7778.
 * Verified: the namespace differs from the harness's (ZDTM_OUTER_NS) and
 * holds only lo, which is up; both ends read the other's data exactly
 * and exchange more; the listener accepts a new connection; the UDP
 * socket receives a datagram sent to it.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#define PORT 7777
#define BYTES 50000

static int lsn, acc, udp, ctl[2];
static pid_t child;
static char buf[BYTES], want[BYTES];

static void pattern(char *b, uint64_t seed)
{
	static uint64_t w[BYTES / 8 + 1];
	zdtm_fill(w, sizeof(w), seed);
	memcpy(b, w, BYTES);
}

static const char *read_exact(int fd, uint64_t seed)
{
	size_t got = 0;
	struct pollfd p = { fd, POLLIN, 0 };
	while (got < BYTES) {
		if (poll(&p, 1, 10000) != 1)
			return "timeout";
		ssize_t r = recv(fd, buf + got, BYTES - got, 0);
		if (r <= 0)
			return r ? "read error" : "EOF";
		got += r;
	}
	pattern(want, seed);
	if (memcmp(buf, want, BYTES))
		return "data differs";
	if (recv(fd, buf, 1, MSG_DONTWAIT) != -1 || errno != EAGAIN)
		return "extra data";
	return NULL;
}

static void sabotage(void)
{
	char c;
	struct ifreq ifr;
	switch (zdtm_sabotage) {
	case 1: /* lo goes down */
		memset(&ifr, 0, sizeof(ifr));
		strcpy(ifr.ifr_name, "lo");
		ioctl(udp, SIOCGIFFLAGS, &ifr);
		ifr.ifr_flags &= ~IFF_UP;
		ioctl(udp, SIOCSIFFLAGS, &ifr);
		break;
	case 2: /* a byte lost */
		recv(acc, &c, 1, 0);
		break;
	}
}

int main(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(PORT) };
	struct ifreq ifr;
	struct stat st;
	const char *outer = getenv("ZDTM_OUTER_NS"), *p, *e;
	int one = 1, fd, status;
	char c;

	zdtm_init();
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	udp = socket(AF_INET, SOCK_DGRAM, 0);
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	if (udp < 0 || ioctl(udp, SIOCGIFFLAGS, &ifr))
		zdtm_die("lo flags: %s", strerror(errno));
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(udp, SIOCSIFFLAGS, &ifr))
		zdtm_die("lo up: %s", strerror(errno));
	lsn = socket(AF_INET, SOCK_STREAM, 0);
	if (lsn < 0 || setsockopt(lsn, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(lsn, (struct sockaddr *)&a, sizeof(a)) || listen(lsn, 8))
		zdtm_die("listener: %s", strerror(errno));
	if (pipe(ctl))
		zdtm_die("pipe: %s", strerror(errno));
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)))
		zdtm_die("connect: %s", strerror(errno));
	acc = accept(lsn, NULL, NULL);
	if (acc < 0)
		zdtm_die("accept: %s", strerror(errno));
	pattern(buf, 1);
	if (send(acc, buf, BYTES, 0) != BYTES)
		zdtm_die("send: %s", strerror(errno));
	pattern(buf, 2);
	if (send(fd, buf, BYTES, 0) != BYTES)
		zdtm_die("send: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0) {
		close(ctl[1]);
		while (read(ctl[0], &c, 1) < 0 && errno == EINTR)
			;
		e = read_exact(fd, 1);
		if (e) {
			zdtm_log("child: %s", e);
			_exit(3);
		}
		_exit(send(fd, "done", 4, 0) == 4 ? 0 : 4);
	}
	zdtm_kid(child);
	close(fd);
	close(ctl[0]);
	a.sin_port = htons(PORT + 1);
	if (bind(udp, (struct sockaddr *)&a, sizeof(a)))
		zdtm_die("udp bind: %s", strerror(errno));

	zdtm_ready();
	zdtm_wait();
	sabotage();

	p = outer ? strstr(outer, "net:") : NULL;
	zdtm_check(p && !stat("/proc/self/ns/net", &st) && (unsigned long)st.st_ino != strtoul(p + 4, NULL, 10),
		   "not in a network namespace of its own");
	zdtm_check(zdtm_read_file("/proc/self/net/dev", buf, sizeof(buf)) > 0, "read /proc/self/net/dev");
	p = strchr(buf, '\n');
	p = p ? strchr(p + 1, '\n') : NULL;
	zdtm_check(p && !strncmp(p + 1 + strspn(p + 1, " "), "lo:", 3) && !strchr(strchr(p + 1, '\n') + 1, ':'),
		   "interfaces other than lo");
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	zdtm_check(!ioctl(udp, SIOCGIFFLAGS, &ifr) && (ifr.ifr_flags & IFF_UP), "lo is down");
	e = read_exact(acc, 2);
	zdtm_check(!e, "root: %s", e);
	zdtm_check(write(ctl[1], "v", 1) == 1, "tell the child");
	zdtm_check(recv(acc, buf, 4, MSG_WAITALL) == 4 && !memcmp(buf, "done", 4), "no answer from the child");
	zdtm_check(waitpid(child, &status, 0) == child && WIFEXITED(status) && !WEXITSTATUS(status),
		   "child failed: %#x", status);
	zdtm_nkids = 0;
	a.sin_port = htons(PORT);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	zdtm_check(fd >= 0 && !connect(fd, (struct sockaddr *)&a, sizeof(a)), "connect: %s", strerror(errno));
	zdtm_check(accept(lsn, NULL, NULL) >= 0, "accept: %s", strerror(errno));
	a.sin_port = htons(PORT + 1);
	zdtm_check(sendto(fd = socket(AF_INET, SOCK_DGRAM, 0), "u", 1, 0, (struct sockaddr *)&a, sizeof(a)) == 1 &&
			   recv(udp, &c, 1, 0) == 1 && c == 'u',
		   "udp: %s", strerror(errno));
	zdtm_pass();
}
