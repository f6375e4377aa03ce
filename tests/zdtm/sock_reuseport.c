/*
 * sock_reuseport: SO_REUSEPORT groups on loopback: four UDP sockets owned
 * by uid 1000 (made with that filesystem uid) bound to 127.0.0.1:P one
 * after the other, three TCP listeners on
 * 127.0.0.1:P+1 and two IPv6 TCP listeners on [::1]:P+2, a listener with
 * SO_INCOMING_CPU 1 on P+3, with P taken from
 * the pid (the runner runs several copies at once in its namespace, and a
 * socket of another copy on the same port would join the group).
 * Verified: every member still bound and SO_REUSEPORT set; datagrams
 * from 32 source ports each reach one member, and, while the program is
 * in the network namespace it started in, the same member as before the
 * checkpoint (the kernel picks the member by hashing the flow into the
 * group's array, with a secret of the namespace: the group must be formed
 * again in the same order); the UDP members are still owned by uid 1000,
 * and a new socket of uid 1000 joins their group where one of root
 * cannot (the kernel groups sockets of one uid only); connections from 8
 * source ports to each TCP group are accepted by one listener each, the
 * same as before in the same namespace.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/fsuid.h>
#include <sys/socket.h>

#define NSRC 32
/* Below the ephemeral range: 20000 + 40 * (pid % 300). */
static int base;
#define UDP_PORT base
#define TCP_PORT (base + 1)
#define TCP6_PORT (base + 2)
#define SRC_PORT (base + 4)
#define NUDP 4
#define NTCP 3
#define NTCP6 2

static int udp[NUDP], tcp[NTCP], tcp6[NTCP6], cpu;
static int map[NSRC];
static ino_t netns;

static ino_t ns_ino(void)
{
	struct stat st;
	return stat("/proc/self/ns/net", &st) ? 0 : st.st_ino;
}

static int opt(int s, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	if (getsockopt(s, level, name, &v, &l))
		return -1000 - errno;
	return v;
}

static int bound(int ty, int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	int one = 1, s = socket(AF_INET, ty, 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) || bind(s, (struct sockaddr *)&a, sizeof(a)))
		return -1;
	return s;
}

static int bound6(int port)
{
	struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	int one = 1, s = socket(AF_INET6, SOCK_STREAM, 0);
	if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) || bind(s, (struct sockaddr *)&a, sizeof(a)))
		return -1;
	return s;
}

/* Sends one datagram from each source port and records which member
 * read it (-1: none or several). */
static const char *spread(int *out)
{
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(UDP_PORT) };
	to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	for (int i = 0; i < NSRC; i++) {
		struct pollfd p[NUDP];
		int c = bound(SOCK_DGRAM, SRC_PORT + i), got = 0;
		char b[8];
		if (c < 0)
			return "bind a source port";
		if (sendto(c, &i, sizeof(i), 0, (struct sockaddr *)&to, sizeof(to)) != sizeof(i))
			return "send";
		close(c);
		out[i] = -1;
		for (int m = 0; m < NUDP; m++)
			p[m] = (struct pollfd){ udp[m], POLLIN, 0 };
		if (poll(p, NUDP, 10000) < 1)
			return "no member read a datagram within 10 s";
		for (int m = 0; m < NUDP; m++) {
			if (recv(udp[m], b, sizeof(b), MSG_DONTWAIT) == sizeof(i)) {
				out[i] = m;
				got++;
			}
		}
		if (got != 1)
			return "a datagram reached several members";
	}
	return NULL;
}

/* Connects to a TCP group from source port `src` and has one of its
 * listeners accept it: which one goes to *who. */
static const char *accept_one(int family, int port, int *group, int n, int src, int *who)
{
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	struct sockaddr_in a4 = { .sin_family = AF_INET, .sin_port = htons(port) };
	struct sockaddr_in6 s6 = { .sin6_family = AF_INET6, .sin6_port = htons(src), .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	struct sockaddr_in s4 = { .sin_family = AF_INET, .sin_port = htons(src) };
	struct linger lg = { 1, 0 };
	struct pollfd p[NTCP];
	int c = socket(family, SOCK_STREAM, 0), got = 0, one = 1;

	a4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	s4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(c, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (family == AF_INET ? bind(c, (struct sockaddr *)&s4, sizeof(s4)) : bind(c, (struct sockaddr *)&s6, sizeof(s6)))
		return "bind the source port";
	if (family == AF_INET ? connect(c, (struct sockaddr *)&a4, sizeof(a4)) : connect(c, (struct sockaddr *)&a6, sizeof(a6)))
		return "connect";
	for (int m = 0; m < n; m++)
		p[m] = (struct pollfd){ group[m], POLLIN, 0 };
	if (poll(p, n, 10000) < 1)
		return "no listener had the connection within 10 s";
	for (int m = 0; m < n; m++) {
		int s = (p[m].revents & POLLIN) ? accept(group[m], NULL, NULL) : -1;
		if (s >= 0) {
			got++;
			*who = m;
			/* Reset by the client first: no TIME_WAIT on either side. */
			setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
			close(s);
		}
	}
	/* A reset leaves no TIME_WAIT behind. */
	setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(c);
	return got == 1 ? NULL : "the connection reached several listeners";
}

/* Which listener of a TCP group each of NTSRC source ports reaches. */
#define NTSRC 8
static const char *tcp_spread(int family, int port, int *group, int n, int *out)
{
	for (int i = 0; i < NTSRC; i++) {
		const char *e = accept_one(family, port, group, n, SRC_PORT + i, &out[i]);
		if (e)
			return e;
	}
	return NULL;
}

static int tmap[NTSRC], tmap6[NTSRC];

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* the first member leaves and comes back last */
		close(udp[0]);
		setfsuid(1000);
		udp[0] = bound(SOCK_DGRAM, UDP_PORT);
		setfsuid(0);
		break;
	case 3: /* the preferred CPU forgotten */
		setsockopt(cpu, SOL_SOCKET, SO_INCOMING_CPU, &(int){ -1 }, sizeof(int));
		break;
	case 4: /* a member made again by root, which cannot join */
		close(udp[3]);
		udp[3] = bound(SOCK_DGRAM, UDP_PORT);
		break;
	case 2: /* a listener stops listening */
		close(tcp[1]);
		tcp[1] = bound(SOCK_STREAM, TCP_PORT);
		break;
	}
}

int main(void)
{
	int again[NSRC];
	const char *e;

	zdtm_init();
	base = 20000 + 40 * (getpid() % 300);
	setfsuid(1000);
	for (int i = 0; i < NUDP; i++)
		if ((udp[i] = bound(SOCK_DGRAM, UDP_PORT)) < 0)
			zdtm_die("udp member %d: %s", i, strerror(errno));
	setfsuid(0);
	for (int i = 0; i < NTCP; i++)
		if ((tcp[i] = bound(SOCK_STREAM, TCP_PORT)) < 0 || listen(tcp[i], 16))
			zdtm_die("tcp listener %d: %s", i, strerror(errno));
	for (int i = 0; i < NTCP6; i++)
		if ((tcp6[i] = bound6(TCP6_PORT)) < 0 || listen(tcp6[i], 16))
			zdtm_die("tcp6 listener %d: %s", i, strerror(errno));
	if ((e = spread(map)))
		zdtm_die("udp group: %s: %s", e, strerror(errno));
	if ((e = tcp_spread(AF_INET, TCP_PORT, tcp, NTCP, tmap)) || (e = tcp_spread(AF_INET6, TCP6_PORT, tcp6, NTCP6, tmap6)))
		zdtm_die("tcp groups: %s: %s", e, strerror(errno));
	/* A CPU preference (which makes a group's choice depend on the CPU a
	 * packet arrives on: on a listener of its own). */
	if ((cpu = bound(SOCK_STREAM, base + 3)) < 0 || listen(cpu, 4) ||
	    setsockopt(cpu, SOL_SOCKET, SO_INCOMING_CPU, &(int){ 1 }, sizeof(int)))
		zdtm_die("SO_INCOMING_CPU: %s", strerror(errno));
	netns = ns_ino();
	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (int i = 0; i < NUDP; i++)
		zdtm_check(opt(udp[i], SOL_SOCKET, SO_REUSEPORT) == 1, "udp member %d: SO_REUSEPORT %d", i,
			   opt(udp[i], SOL_SOCKET, SO_REUSEPORT));
	for (int i = 0; i < NTCP; i++)
		zdtm_check(opt(tcp[i], SOL_SOCKET, SO_ACCEPTCONN) == 1, "tcp listener %d does not listen", i);
	for (int i = 0; i < NTCP6; i++)
		zdtm_check(opt(tcp6[i], SOL_SOCKET, SO_ACCEPTCONN) == 1, "tcp6 listener %d does not listen", i);
	zdtm_check(opt(cpu, SOL_SOCKET, SO_INCOMING_CPU) == 1, "SO_INCOMING_CPU %d", opt(cpu, SOL_SOCKET, SO_INCOMING_CPU));
	e = spread(again);
	zdtm_check(!e, "udp group: %s", e);
	if (ns_ino() == netns)
		for (int i = 0; i < NSRC; i++)
			zdtm_check(again[i] == map[i], "source port %d reached member %d, before member %d", SRC_PORT + i,
				   again[i], map[i]);
	for (int i = 0; i < NUDP; i++) {
		struct stat st;
		zdtm_check(udp[i] >= 0 && !fstat(udp[i], &st) && st.st_uid == 1000, "udp member %d not owned by uid 1000", i);
	}
	{
		int r = bound(SOCK_DGRAM, UDP_PORT), u;
		zdtm_check(r < 0 && errno == EADDRINUSE, "a socket of root joined the group of uid 1000");
		setfsuid(1000);
		u = bound(SOCK_DGRAM, UDP_PORT);
		setfsuid(0);
		zdtm_check(u >= 0, "a socket of uid 1000 cannot join its group: %s", strerror(errno));
		close(u);
	}
	{
		int t[NTSRC], t6[NTSRC];
		e = tcp_spread(AF_INET, TCP_PORT, tcp, NTCP, t);
		zdtm_check(!e, "tcp group: %s", e);
		e = tcp_spread(AF_INET6, TCP6_PORT, tcp6, NTCP6, t6);
		zdtm_check(!e, "tcp6 group: %s", e);
		if (ns_ino() == netns)
			for (int i = 0; i < NTSRC; i++)
				zdtm_check(t[i] == tmap[i] && t6[i] == tmap6[i],
					   "source port %d reached listeners %d and %d, before %d and %d", SRC_PORT + i, t[i],
					   t6[i], tmap[i], tmap6[i]);
	}
	zdtm_pass();
}
