/*
 * sock_udplite: UDP-Lite sockets (IPPROTO_UDPLITE) with their checksum
 * coverage, in a network namespace of its own (run under `unshare
 * --net`): a receiver bound to 127.0.0.1:7001 that wants at least 20
 * bytes covered (UDPLITE_RECV_CSCOV), a sender bound to 127.0.0.1:7002,
 * connected to it, covering 20 bytes (UDPLITE_SEND_CSCOV), a sender
 * covering 8, and an IPv6 socket on [::1]:7003 with both set to 12.
 * Verified: names, the peer, the coverage options; a datagram covering 8
 * bytes is dropped by the receiver and one covering 20 arrives whole.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#ifndef IPPROTO_UDPLITE
#define IPPROTO_UDPLITE 136
#endif
#define UDPLITE_SEND_CSCOV 10
#define UDPLITE_RECV_CSCOV 11

static int rcv, snd, partial, v6;

static void lo_up(void)
{
	struct ifreq ifr;
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr))
		zdtm_die("lo flags: %s", strerror(errno));
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr))
		zdtm_die("lo up: %s", strerror(errno));
	close(s);
}

static int opt(int s, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	if (getsockopt(s, IPPROTO_UDPLITE, name, &v, &l))
		return -1000 - errno;
	return v;
}

static void set(int s, int name, int v)
{
	if (setsockopt(s, IPPROTO_UDPLITE, name, &v, sizeof(v)))
		zdtm_die("setsockopt %d: %s", name, strerror(errno));
}

static int port(int s, int peer)
{
	struct sockaddr_in6 a;
	socklen_t l = sizeof(a);
	memset(&a, 0, sizeof(a));
	if ((peer ? getpeername : getsockname)(s, (struct sockaddr *)&a, &l))
		return -1;
	return ntohs(a.sin6_port);
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* the receiver takes partial coverage of 8 */
		set(rcv, UDPLITE_RECV_CSCOV, 8);
		break;
	case 2: /* the sender's coverage changed */
		set(v6, UDPLITE_SEND_CSCOV, 16);
		break;
	case 3: /* the sender no longer connected */
		close(snd);
		snd = socket(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE);
		break;
	}
}

int main(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	struct sockaddr_in6 b = { .sin6_family = AF_INET6, .sin6_port = htons(7003), .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	char msg[100], got[200];
	struct pollfd p;
	ssize_t n;

	zdtm_init();
	lo_up();
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	rcv = socket(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE);
	snd = socket(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE);
	partial = socket(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE);
	v6 = socket(AF_INET6, SOCK_DGRAM, IPPROTO_UDPLITE);
	if (rcv < 0 || snd < 0 || partial < 0 || v6 < 0)
		zdtm_die("UDP-Lite sockets: %s", strerror(errno));
	a.sin_port = htons(7001);
	if (bind(rcv, (struct sockaddr *)&a, sizeof(a)))
		zdtm_die("bind 7001: %s", strerror(errno));
	set(rcv, UDPLITE_RECV_CSCOV, 20);
	a.sin_port = htons(7002);
	if (bind(snd, (struct sockaddr *)&a, sizeof(a)))
		zdtm_die("bind 7002: %s", strerror(errno));
	a.sin_port = htons(7001);
	if (connect(snd, (struct sockaddr *)&a, sizeof(a)) || connect(partial, (struct sockaddr *)&a, sizeof(a)))
		zdtm_die("connect: %s", strerror(errno));
	set(snd, UDPLITE_SEND_CSCOV, 20);
	set(partial, UDPLITE_SEND_CSCOV, 8);
	if (bind(v6, (struct sockaddr *)&b, sizeof(b)))
		zdtm_die("bind [::1]:7003: %s", strerror(errno));
	set(v6, UDPLITE_SEND_CSCOV, 12);
	set(v6, UDPLITE_RECV_CSCOV, 12);
	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(port(rcv, 0) == 7001 && port(snd, 0) == 7002 && port(v6, 0) == 7003, "ports %d %d %d", port(rcv, 0),
		   port(snd, 0), port(v6, 0));
	zdtm_check(port(snd, 1) == 7001 && port(partial, 1) == 7001, "peers %d %d", port(snd, 1), port(partial, 1));
	zdtm_check(opt(rcv, UDPLITE_RECV_CSCOV) == 20, "receiver RECV_CSCOV %d", opt(rcv, UDPLITE_RECV_CSCOV));
	zdtm_check(opt(snd, UDPLITE_SEND_CSCOV) == 20, "sender SEND_CSCOV %d", opt(snd, UDPLITE_SEND_CSCOV));
	zdtm_check(opt(partial, UDPLITE_SEND_CSCOV) == 8, "partial SEND_CSCOV %d", opt(partial, UDPLITE_SEND_CSCOV));
	zdtm_check(opt(v6, UDPLITE_SEND_CSCOV) == 12 && opt(v6, UDPLITE_RECV_CSCOV) == 12, "ipv6 coverage %d %d",
		   opt(v6, UDPLITE_SEND_CSCOV), opt(v6, UDPLITE_RECV_CSCOV));
	zdtm_check(opt(rcv, UDPLITE_SEND_CSCOV) == 0, "receiver SEND_CSCOV %d", opt(rcv, UDPLITE_SEND_CSCOV));
	/* Loopback keeps the order: the partial one would come first. */
	memset(msg, 'p', sizeof(msg));
	zdtm_check(send(partial, msg, sizeof(msg), 0) == sizeof(msg), "send partial: %s", strerror(errno));
	memset(msg, 'f', sizeof(msg));
	zdtm_check(send(snd, msg, sizeof(msg), 0) == sizeof(msg), "send: %s", strerror(errno));
	p = (struct pollfd){ rcv, POLLIN, 0 };
	zdtm_check(poll(&p, 1, 10000) == 1, "nothing received within 10 s");
	n = recv(rcv, got, sizeof(got), 0);
	zdtm_check(n == sizeof(msg) && !memcmp(got, msg, sizeof(msg)), "received %zd bytes starting with %c", n,
		   n > 0 ? got[0] : '?');
	zdtm_pass();
}
