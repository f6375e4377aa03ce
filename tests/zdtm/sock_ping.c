/*
 * sock_ping: ICMP ("ping") datagram sockets, in a network namespace of its
 * own (run under `unshare --net`) whose net.ipv4.ping_group_range it sets
 * to "1000 2000" (root's gid 0 is not in it: the sockets are made with
 * effective gid 1000): an IPv4 socket bound to 127.0.0.1 with identifier 0x1234,
 * IP_TTL 33, IP_RECVERR and a classic BPF filter cutting what it reads to
 * 12 bytes; an IPv4 socket connected to 127.0.0.1 (autobound identifier);
 * an IPv6 socket bound to ::1 with identifier 0x4321, hop limit 17 and
 * IPV6_RECVPKTINFO.
 * Verified: ping_group_range, the sockets' group (1000), identifiers
 * (getsockname), the peer of the
 * connected one (send without an address), options; each socket sends an
 * echo request and reads the kernel's reply with its identifier, sequence
 * and payload (the filtered one cut to 12 bytes by its filter); gid 1000
 * can make a new one, gid 0 cannot.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <linux/filter.h>
#include <net/if.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#define RANGE_FILE "/proc/sys/net/ipv4/ping_group_range"

static int p4, pc, p6;
static uint16_t conn_id;

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

static void put_range(const char *r)
{
	int fd = open(RANGE_FILE, O_WRONLY);
	if (fd < 0 || write(fd, r, strlen(r)) != (ssize_t)strlen(r))
		zdtm_die("write %s: %s", RANGE_FILE, strerror(errno));
	close(fd);
}

static int opt(int s, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	if (getsockopt(s, level, name, &v, &l))
		return -1000 - errno;
	return v;
}

static uint16_t ident(int s)
{
	struct sockaddr_in6 a;
	socklen_t l = sizeof(a);
	memset(&a, 0, sizeof(a));
	if (getsockname(s, (struct sockaddr *)&a, &l))
		return 0;
	return ntohs(a.sin6_port); /* sin_port sits at the same place */
}

/* Sends an echo request (to `to`, or to the peer) and reads the reply:
 * NULL when it carries `id`, `seq` and the payload (cut to `cut` bytes
 * when the filter does). */
static const char *echo(int s, int v6, const void *to, socklen_t tolen, uint16_t id, uint16_t seq, int cut)
{
	static char why[160];
	unsigned char req[64], rep[128];
	struct pollfd p = { s, POLLIN, 0 };
	ssize_t n;

	memset(req, 0, sizeof(req));
	req[0] = v6 ? ICMP6_ECHO_REQUEST : ICMP_ECHO;
	req[6] = seq >> 8;
	req[7] = seq & 0xff;
	for (int i = 8; i < (int)sizeof(req); i++)
		req[i] = (unsigned char)(i * 7 + seq);
	if (sendto(s, req, sizeof(req), 0, to, tolen) != sizeof(req)) {
		snprintf(why, sizeof(why), "send: %s", strerror(errno));
		return why;
	}
	if (poll(&p, 1, 10000) != 1)
		return "no reply within 10 s";
	n = recv(s, rep, sizeof(rep), 0);
	if (n < 0) {
		snprintf(why, sizeof(why), "recv: %s", strerror(errno));
		return why;
	}
	if (rep[0] != (v6 ? ICMP6_ECHO_REPLY : ICMP_ECHOREPLY))
		return "not an echo reply";
	if (((rep[4] << 8) | rep[5]) != id) {
		snprintf(why, sizeof(why), "reply with identifier %#x, expected %#x", (rep[4] << 8) | rep[5], id);
		return why;
	}
	if (((rep[6] << 8) | rep[7]) != seq)
		return "reply with another sequence";
	if (memcmp(rep + 8, req + 8, (cut ? cut : (int)sizeof(req)) - 8))
		return "reply with another payload";
	if (n != (cut ? cut : (ssize_t)sizeof(req))) {
		snprintf(why, sizeof(why), "reply of %zd bytes, expected %d", n, cut ? cut : (int)sizeof(req));
		return why;
	}
	return NULL;
}

static void sabotage(void)
{
	int ttl = 5;
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(0x1235) };
	switch (zdtm_sabotage) {
	case 1: /* the namespace's range back to nobody */
		put_range("1 0");
		break;
	case 2: /* the bound socket replaced by one of another identifier */
		close(p4);
		p4 = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		bind(p4, (struct sockaddr *)&a, sizeof(a));
		break;
	case 3: /* an option changed */
		setsockopt(p6, IPPROTO_IPV6, IPV6_UNICAST_HOPS, &ttl, sizeof(ttl));
		break;
	case 4: /* the connected socket disconnected */
		a.sin_family = AF_UNSPEC;
		connect(pc, (struct sockaddr *)&a, sizeof(a));
		break;
	}
}

int main(void)
{
	struct sockaddr_in a4 = { .sin_family = AF_INET, .sin_port = htons(0x1234) };
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_port = htons(0x4321), .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	struct sock_filter cut[] = { BPF_STMT(BPF_RET | BPF_K, 12) };
	struct sock_fprog prog = { 1, cut };
	int ttl = 33, one = 1, hops = 17;
	char range[64] = { 0 };
	const char *e;
	int fd;

	zdtm_init();
	lo_up();
	put_range("1000 2000");
	a4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (setegid(1000))
		zdtm_die("setegid: %s", strerror(errno));
	p4 = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
	pc = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
	p6 = socket(AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6);
	if (p4 < 0 || pc < 0 || p6 < 0)
		zdtm_die("ping sockets: %s", strerror(errno));
	if (setegid(0))
		zdtm_die("setegid: %s", strerror(errno));
	if (bind(p4, (struct sockaddr *)&a4, sizeof(a4)) || setsockopt(p4, IPPROTO_IP, IP_TTL, &ttl, sizeof(ttl)) ||
	    setsockopt(p4, IPPROTO_IP, IP_RECVERR, &one, sizeof(one)) ||
	    setsockopt(p4, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)))
		zdtm_die("bound socket: %s", strerror(errno));
	a4.sin_port = 0;
	if (connect(pc, (struct sockaddr *)&a4, sizeof(a4)))
		zdtm_die("connect: %s", strerror(errno));
	/* One echo before the checkpoint: the identifier is autobound. */
	if ((e = echo(pc, 0, NULL, 0, ident(pc), 1, 0)))
		zdtm_die("connected echo: %s", e);
	conn_id = ident(pc);
	if (bind(p6, (struct sockaddr *)&a6, sizeof(a6)) ||
	    setsockopt(p6, IPPROTO_IPV6, IPV6_UNICAST_HOPS, &hops, sizeof(hops)) ||
	    setsockopt(p6, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one)))
		zdtm_die("ipv6 socket: %s", strerror(errno));
	zdtm_ready();
	zdtm_wait();
	sabotage();

	fd = open(RANGE_FILE, O_RDONLY);
	zdtm_check(fd >= 0 && read(fd, range, sizeof(range) - 1) > 0, "read %s: %s", RANGE_FILE, strerror(errno));
	close(fd);
	zdtm_check(!strcmp(range, "1000\t2000\n"), "ping_group_range %s", range);
	{
		struct stat st;
		zdtm_check(!fstat(p4, &st) && st.st_gid == 1000 && !fstat(p6, &st) && st.st_gid == 1000,
			   "the sockets' group is not 1000");
	}
	zdtm_check(ident(p4) == 0x1234, "bound identifier %#x", ident(p4));
	zdtm_check(ident(p6) == 0x4321, "ipv6 identifier %#x", ident(p6));
	zdtm_check(conn_id != 0 && ident(pc) == conn_id, "connected identifier %#x, was %#x", ident(pc), conn_id);
	zdtm_check(opt(p4, IPPROTO_IP, IP_TTL) == 33, "IP_TTL %d", opt(p4, IPPROTO_IP, IP_TTL));
	zdtm_check(opt(p4, IPPROTO_IP, IP_RECVERR) == 1, "IP_RECVERR %d", opt(p4, IPPROTO_IP, IP_RECVERR));
	zdtm_check(opt(p6, IPPROTO_IPV6, IPV6_UNICAST_HOPS) == 17, "hop limit %d", opt(p6, IPPROTO_IPV6, IPV6_UNICAST_HOPS));
	zdtm_check(opt(p6, IPPROTO_IPV6, IPV6_RECVPKTINFO) == 1, "IPV6_RECVPKTINFO %d",
		   opt(p6, IPPROTO_IPV6, IPV6_RECVPKTINFO));
	a4.sin_port = 0;
	e = echo(p4, 0, &a4, sizeof(a4), 0x1234, 7, 12);
	zdtm_check(!e, "bound socket: %s", e);
	e = echo(pc, 0, NULL, 0, conn_id, 8, 0);
	zdtm_check(!e, "connected socket: %s", e);
	a6.sin6_port = 0;
	e = echo(p6, 1, &a6, sizeof(a6), 0x4321, 9, 0);
	zdtm_check(!e, "ipv6 socket: %s", e);
	/* Gid 0 is not in the range, gid 1000 is. */
	fd = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
	zdtm_check(fd < 0 && errno == EACCES, "gid 0 made a ping socket (%s)", strerror(errno));
	zdtm_check(!setegid(1000), "setegid: %s", strerror(errno));
	fd = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
	zdtm_check(fd >= 0, "new ping socket of gid 1000: %s", strerror(errno));
	close(fd);
	zdtm_pass();
}
