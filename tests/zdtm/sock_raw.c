/*
 * sock_raw: raw sockets in a network namespace of its own (run under
 * `unshare --net`, lo up): an IPv4 ICMP socket bound to 127.0.0.1 whose
 * ICMP_FILTER drops echo requests, an IPv4 ICMP socket connected to
 * 127.0.0.1, an IPv4 UDP socket with IP_HDRINCL, an IPv6 ICMPv6 socket
 * bound to ::1 whose ICMP6_FILTER passes echo replies only, an IPv6
 * socket of protocol 253 with IPV6_CHECKSUM at offset 2.
 * Verified: names (the port of a raw socket is its protocol), options;
 * the connected socket sends an echo request without an address and the
 * filtered socket reads the reply, not the request; the same over IPv6.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#ifndef SOL_RAW
#define SOL_RAW 255
#endif
/* linux/icmp.h's, which clashes with netinet's headers: a mask of types. */
#define ICMP_FILTER 1

static int r4, r4c, r4h, r6, r6c;

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

static int opt(int s, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	if (getsockopt(s, level, name, &v, &l))
		return -1000 - errno;
	return v;
}

/* "ADDR:PORT" of a socket's name. */
static const char *name(int s)
{
	static char out[4][80];
	static int i;
	struct sockaddr_in6 a;
	socklen_t l = sizeof(a);
	char ip[64] = "?";
	char *o = out[i++ % 4];

	memset(&a, 0, sizeof(a));
	getsockname(s, (struct sockaddr *)&a, &l);
	if (a.sin6_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)&a)->sin_addr, ip, sizeof(ip));
	else
		inet_ntop(AF_INET6, &a.sin6_addr, ip, sizeof(ip));
	snprintf(o, 80, "%s:%d", ip, ntohs(a.sin6_port));
	return o;
}

static uint16_t csum(const unsigned char *p, int len)
{
	uint32_t sum = 0;
	for (int i = 0; i + 1 < len; i += 2)
		sum += (p[i] << 8) | p[i + 1];
	if (len & 1)
		sum += p[len - 1] << 8;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* Waits for the first packet on `s` and returns the ICMP type at `off`
 * (past the IPv4 header on an IPv4 raw socket), or -1. */
static int first_type(int s, int off)
{
	unsigned char b[256];
	struct pollfd p = { s, POLLIN, 0 };
	ssize_t n;
	if (poll(&p, 1, 10000) != 1)
		return -1;
	n = recv(s, b, sizeof(b), 0);
	if (n <= off)
		return -1;
	return b[off];
}

static void sabotage(void)
{
	uint32_t none = 0;
	struct sockaddr_in a = { .sin_family = AF_UNSPEC };
	int off = 4;
	switch (zdtm_sabotage) {
	case 1: /* the filter lets requests through */
		setsockopt(r4, SOL_RAW, ICMP_FILTER, &none, sizeof(none));
		break;
	case 2: /* the connected socket disconnected */
		connect(r4c, (struct sockaddr *)&a, sizeof(a));
		break;
	case 3: /* the checksum offset moved */
		setsockopt(r6c, SOL_RAW, IPV6_CHECKSUM, &off, sizeof(off));
		break;
	}
}

int main(void)
{
	struct sockaddr_in a4 = { .sin_family = AF_INET };
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	uint32_t f4 = 1u << ICMP_ECHO;
	struct icmp6_filter f6, g6;
	unsigned char req[16];
	socklen_t l;
	int one = 1, two = 2;

	zdtm_init();
	lo_up();
	a4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	r4 = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
	r4c = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
	r4h = socket(AF_INET, SOCK_RAW, IPPROTO_UDP);
	r6 = socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6);
	r6c = socket(AF_INET6, SOCK_RAW, 253);
	if (r4 < 0 || r4c < 0 || r4h < 0 || r6 < 0 || r6c < 0)
		zdtm_die("raw sockets: %s", strerror(errno));
	if (bind(r4, (struct sockaddr *)&a4, sizeof(a4)) || setsockopt(r4, SOL_RAW, ICMP_FILTER, &f4, sizeof(f4)))
		zdtm_die("filtered socket: %s", strerror(errno));
	if (connect(r4c, (struct sockaddr *)&a4, sizeof(a4)))
		zdtm_die("connect: %s", strerror(errno));
	if (setsockopt(r4h, IPPROTO_IP, IP_HDRINCL, &one, sizeof(one)))
		zdtm_die("IP_HDRINCL: %s", strerror(errno));
	ICMP6_FILTER_SETBLOCKALL(&f6);
	ICMP6_FILTER_SETPASS(ICMP6_ECHO_REPLY, &f6);
	if (bind(r6, (struct sockaddr *)&a6, sizeof(a6)) || setsockopt(r6, IPPROTO_ICMPV6, ICMP6_FILTER, &f6, sizeof(f6)))
		zdtm_die("icmpv6 socket: %s", strerror(errno));
	if (setsockopt(r6c, SOL_RAW, IPV6_CHECKSUM, &two, sizeof(two)))
		zdtm_die("IPV6_CHECKSUM: %s", strerror(errno));
	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(!strcmp(name(r4), "127.0.0.1:1"), "filtered socket at %s", name(r4));
	zdtm_check(!strcmp(name(r4c), "0.0.0.0:1") || !strcmp(name(r4c), "127.0.0.1:1"), "connected socket at %s",
		   name(r4c));
	zdtm_check(!strcmp(name(r4h), "0.0.0.0:17"), "hdrincl socket at %s", name(r4h));
	zdtm_check(!strcmp(name(r6), "::1:58"), "icmpv6 socket at %s", name(r6));
	zdtm_check(!strcmp(name(r6c), ":::253"), "protocol 253 socket at %s", name(r6c));
	zdtm_check(opt(r4h, IPPROTO_IP, IP_HDRINCL) == 1, "IP_HDRINCL %d", opt(r4h, IPPROTO_IP, IP_HDRINCL));
	zdtm_check(opt(r4, SOL_RAW, ICMP_FILTER) == (int)(1u << ICMP_ECHO), "ICMP_FILTER %#x", opt(r4, SOL_RAW, ICMP_FILTER));
	zdtm_check(opt(r6c, SOL_RAW, IPV6_CHECKSUM) == 2, "IPV6_CHECKSUM %d", opt(r6c, SOL_RAW, IPV6_CHECKSUM));
	l = sizeof(g6);
	zdtm_check(!getsockopt(r6, IPPROTO_ICMPV6, ICMP6_FILTER, &g6, &l) && l == sizeof(g6) && !memcmp(&f6, &g6, sizeof(f6)),
		   "ICMP6_FILTER differs");
	/* An echo request from the connected socket, with no address. */
	memset(req, 0, sizeof(req));
	req[0] = ICMP_ECHO;
	req[4] = 0x55;
	req[7] = 1;
	*(uint16_t *)(req + 2) = htons(csum(req, sizeof(req)));
	zdtm_check(send(r4c, req, sizeof(req), 0) == sizeof(req), "send on the connected socket: %s", strerror(errno));
	zdtm_check(first_type(r4, 20) == ICMP_ECHOREPLY, "the filtered socket did not read the echo reply first");
	memset(req, 0, sizeof(req));
	req[0] = ICMP6_ECHO_REQUEST;
	req[4] = 0x66;
	req[7] = 2;
	a6.sin6_port = 0;
	zdtm_check(sendto(r6, req, sizeof(req), 0, (struct sockaddr *)&a6, sizeof(a6)) == sizeof(req), "send icmpv6: %s",
		   strerror(errno));
	zdtm_check(first_type(r6, 0) == ICMP6_ECHO_REPLY, "the icmpv6 socket did not read the echo reply first");
	zdtm_pass();
}
