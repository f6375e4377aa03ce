/*
 * sock_dgram_bound: bound, unconnected unix datagram sockets with data
 * queued from several senders.
 *
 * State: a server bound to an abstract name, not connected, holding in
 * order "one" from an unnamed unconnected socket (sendto), "two" from a
 * socket bound to a path, "three" from an unnamed socket connected to the
 * server, "four" from the path-bound sender again; a second server bound
 * to a path holding "five" from the same path-bound sender and "six" from
 * an abstract-named sender.
 * Verified: each datagram's bytes, order and source address (unnamed, or
 * the sender's name) through recvfrom, nothing more; both servers still
 * receive, and the senders still send.
 */
#include "zdtm.h"

#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

static int srv, srv2, anon, named, conn, abs_snd;
static struct sockaddr_un srv_a, srv2_a, named_a, abs_a;
static socklen_t srv_l, srv2_l, named_l, abs_l;
static char scratch[8];

static socklen_t abstract(struct sockaddr_un *a, const char *what)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, "lpm-zdtm-%s-%d", what, getpid());
	return offsetof(struct sockaddr_un, sun_path) + 1 + strlen(a->sun_path + 1);
}

static socklen_t at_path(struct sockaddr_un *a, const char *name)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	zdtm_path(a->sun_path, sizeof(a->sun_path), name);
	unlink(a->sun_path);
	return sizeof(*a);
}

static int bound(const struct sockaddr_un *a, socklen_t l)
{
	int s = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (s < 0 || bind(s, (const struct sockaddr *)a, l))
		zdtm_die("bind: %s", strerror(errno));
	return s;
}

static void sendto_or_die(int s, const char *m, const struct sockaddr_un *a, socklen_t l)
{
	if (sendto(s, m, strlen(m), 0, (const struct sockaddr *)a, l) != (ssize_t)strlen(m))
		zdtm_die("sendto %s: %s", m, strerror(errno));
}

/* The next datagram of s is m from the socket named by (from, fl): fl 0 for unnamed. */
static void expect(int s, const char *m, const struct sockaddr_un *from, socklen_t fl, const char *what)
{
	struct sockaddr_un a;
	socklen_t l = sizeof(a);
	char buf[64];
	ssize_t r;

	memset(&a, 0, sizeof(a));
	r = recvfrom(s, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&a, &l);
	zdtm_check(r == (ssize_t)strlen(m) && !memcmp(buf, m, r), "%s: got %zd bytes instead of \"%s\" (%s)", what, r, m,
		   r < 0 ? strerror(errno) : "");
	if (!fl) {
		zdtm_check(l == 0, "%s: \"%s\" from a named socket (address length %u)", what, m, l);
	} else if (from->sun_path[0]) {
		zdtm_check(!strcmp(a.sun_path, from->sun_path), "%s: \"%s\" from %s, expected %s", what, m, a.sun_path,
			   from->sun_path);
	} else {
		zdtm_check(l == fl && !memcmp(&a, from, fl), "%s: \"%s\" from another abstract name", what, m);
	}
}

static void sabotage(void)
{
	char c[8];
	switch (zdtm_sabotage) {
	case 1: /* the first datagram is lost */
		recv(srv, c, sizeof(c), MSG_DONTWAIT);
		break;
	case 2: /* "five" comes from an unnamed socket */
		recv(srv2, c, sizeof(c), MSG_DONTWAIT);
		recv(srv2, c, sizeof(c), MSG_DONTWAIT);
		sendto_or_die(anon, "five", &srv2_a, srv2_l);
		sendto_or_die(abs_snd, "six", &srv2_a, srv2_l);
		break;
	case 3: /* one datagram more */
		sendto_or_die(anon, "seven", &srv_a, srv_l);
		break;
	}
}

int main(void)
{
	zdtm_init();
	srv_l = abstract(&srv_a, "dgsrv");
	srv2_l = at_path(&srv2_a, "dgsrv2.sock");
	named_l = at_path(&named_a, "dgsnd.sock");
	abs_l = abstract(&abs_a, "dgsnd");
	srv = bound(&srv_a, srv_l);
	srv2 = bound(&srv2_a, srv2_l);
	named = bound(&named_a, named_l);
	abs_snd = bound(&abs_a, abs_l);
	anon = socket(AF_UNIX, SOCK_DGRAM, 0);
	conn = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (anon < 0 || conn < 0 || connect(conn, (struct sockaddr *)&srv_a, srv_l))
		zdtm_die("socket/connect: %s", strerror(errno));
	sendto_or_die(anon, "one", &srv_a, srv_l);
	sendto_or_die(named, "two", &srv_a, srv_l);
	if (send(conn, "three", 5, 0) != 5)
		zdtm_die("send: %s", strerror(errno));
	sendto_or_die(named, "four", &srv_a, srv_l);
	sendto_or_die(named, "five", &srv2_a, srv2_l);
	sendto_or_die(abs_snd, "six", &srv2_a, srv2_l);

	zdtm_ready();
	zdtm_wait();
	sabotage();

	expect(srv, "one", NULL, 0, "abstract server");
	expect(srv, "two", &named_a, named_l, "abstract server");
	expect(srv, "three", NULL, 0, "abstract server");
	expect(srv, "four", &named_a, named_l, "abstract server");
	zdtm_check(recv(srv, scratch, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "abstract server: more data");
	expect(srv2, "five", &named_a, named_l, "path server");
	expect(srv2, "six", &abs_a, abs_l, "path server");
	zdtm_check(recv(srv2, scratch, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "path server: more data");

	sendto_or_die(named, "again", &srv_a, srv_l);
	expect(srv, "again", &named_a, named_l, "abstract server after restore");
	zdtm_check(send(conn, "conn", 4, 0) == 4, "connected sender: %s", strerror(errno));
	expect(srv, "conn", NULL, 0, "abstract server after restore");
	sendto_or_die(anon, "path", &srv2_a, srv2_l);
	expect(srv2, "path", NULL, 0, "path server after restore");
	zdtm_pass();
}
