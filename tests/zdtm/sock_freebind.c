/*
 * sock_freebind: sockets bound to addresses no interface holds, in a
 * network namespace of its own (run under `unshare --net`, lo up): a UDP socket
 * with IP_FREEBIND on 192.0.2.1:5000, a TCP listener with IP_TRANSPARENT
 * on 198.51.100.7:8080, an IPv6 UDP socket with IPV6_FREEBIND on
 * [2001:db8::1]:5001, an IPv6 TCP socket with IPV6_TRANSPARENT bound to
 * [2001:db8::2]:5002.
 * Verified: each name and option; a fresh socket without the option
 * cannot bind such an address (it is still not local), and one with it
 * can bind another.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#ifndef IPV6_FREEBIND
#define IPV6_FREEBIND 78
#endif

static int u4, t4, u6, t6;

/* With lo down the namespace has no local table, and any address binds. */
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

static int bind4(int s, const char *ip, int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, ip, &a.sin_addr);
	return bind(s, (struct sockaddr *)&a, sizeof(a));
}

static int bind6(int s, const char *ip, int port)
{
	struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(port) };
	inet_pton(AF_INET6, ip, &a.sin6_addr);
	return bind(s, (struct sockaddr *)&a, sizeof(a));
}

static void sabotage(void)
{
	int zero = 0;
	switch (zdtm_sabotage) {
	case 1: /* freebind dropped */
		setsockopt(u4, IPPROTO_IP, IP_FREEBIND, &zero, sizeof(zero));
		break;
	case 2: /* the listener replaced by one on another address */
		close(t4);
		t4 = socket(AF_INET, SOCK_STREAM, 0);
		bind4(t4, "127.0.0.1", 8080);
		listen(t4, 4);
		break;
	}
}

int main(void)
{
	int one = 1, s;

	zdtm_init();
	lo_up();
	u4 = socket(AF_INET, SOCK_DGRAM, 0);
	t4 = socket(AF_INET, SOCK_STREAM, 0);
	u6 = socket(AF_INET6, SOCK_DGRAM, 0);
	t6 = socket(AF_INET6, SOCK_STREAM, 0);
	if (u4 < 0 || t4 < 0 || u6 < 0 || t6 < 0)
		zdtm_die("sockets: %s", strerror(errno));
	if (setsockopt(u4, IPPROTO_IP, IP_FREEBIND, &one, sizeof(one)) || bind4(u4, "192.0.2.1", 5000))
		zdtm_die("udp freebind: %s", strerror(errno));
	if (setsockopt(t4, IPPROTO_IP, IP_TRANSPARENT, &one, sizeof(one)) || bind4(t4, "198.51.100.7", 8080) ||
	    listen(t4, 8))
		zdtm_die("tcp transparent: %s", strerror(errno));
	if (setsockopt(u6, IPPROTO_IPV6, IPV6_FREEBIND, &one, sizeof(one)) || bind6(u6, "2001:db8::1", 5001))
		zdtm_die("udp6 freebind: %s", strerror(errno));
	if (setsockopt(t6, IPPROTO_IPV6, IPV6_TRANSPARENT, &one, sizeof(one)) || bind6(t6, "2001:db8::2", 5002))
		zdtm_die("tcp6 transparent: %s", strerror(errno));
	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(!strcmp(name(u4), "192.0.2.1:5000"), "udp name %s", name(u4));
	zdtm_check(!strcmp(name(t4), "198.51.100.7:8080"), "listener name %s", name(t4));
	zdtm_check(!strcmp(name(u6), "2001:db8::1:5001"), "udp6 name %s", name(u6));
	zdtm_check(!strcmp(name(t6), "2001:db8::2:5002"), "tcp6 name %s", name(t6));
	zdtm_check(opt(u4, IPPROTO_IP, IP_FREEBIND) == 1, "IP_FREEBIND %d", opt(u4, IPPROTO_IP, IP_FREEBIND));
	zdtm_check(opt(t4, IPPROTO_IP, IP_TRANSPARENT) == 1, "IP_TRANSPARENT %d", opt(t4, IPPROTO_IP, IP_TRANSPARENT));
	zdtm_check(opt(u6, IPPROTO_IPV6, IPV6_FREEBIND) == 1, "IPV6_FREEBIND %d", opt(u6, IPPROTO_IPV6, IPV6_FREEBIND));
	zdtm_check(opt(t6, IPPROTO_IPV6, IPV6_TRANSPARENT) == 1, "IPV6_TRANSPARENT %d",
		   opt(t6, IPPROTO_IPV6, IPV6_TRANSPARENT));
	zdtm_check(opt(t4, SOL_SOCKET, SO_ACCEPTCONN) == 1, "the listener does not listen");
	zdtm_check(opt(u4, IPPROTO_IP, IP_TRANSPARENT) == 0, "udp IP_TRANSPARENT %d", opt(u4, IPPROTO_IP, IP_TRANSPARENT));
	/* The addresses are still not local. */
	s = socket(AF_INET, SOCK_DGRAM, 0);
	zdtm_check(bind4(s, "192.0.2.9", 5000) && errno == EADDRNOTAVAIL, "bind to a non-local address without freebind: %s", strerror(errno));
	close(s);
	s = socket(AF_INET, SOCK_DGRAM, 0);
	zdtm_check(!setsockopt(s, IPPROTO_IP, IP_FREEBIND, &one, sizeof(one)) && !bind4(s, "192.0.2.9", 5000),
		   "bind with freebind: %s", strerror(errno));
	close(s);
	zdtm_pass();
}
