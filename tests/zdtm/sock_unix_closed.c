/*
 * sock_unix_closed: accepted unix stream connections whose client has
 * closed its end, as a server holds them until it reads the end of file
 * (tmux, a daemon between two requests).
 *
 * State: a listener at a path; two accepted connections whose clients
 * closed: one with "bye" still queued, one empty; a third accepted one
 * whose client still runs (a child).
 * Verified: each closed one reads its bytes, then end of file, and names
 * the listener's path (getsockname); the open one still echoes; the
 * listener still accepts.
 */
#include "zdtm.h"

#include <sys/socket.h>
#include <sys/un.h>

static struct sockaddr_un addr = { .sun_family = AF_UNIX };

static int client(void)
{
	int c = socket(AF_UNIX, SOCK_STREAM, 0);
	zdtm_check(c >= 0 && connect(c, (struct sockaddr *)&addr, sizeof(addr)) == 0, "connect: %s", strerror(errno));
	return c;
}

static void check_closed(int s, const char *want, const char *what)
{
	char buf[16] = { 0 };
	size_t n = strlen(want);
	struct sockaddr_un name;
	socklen_t len = sizeof(name);

	zdtm_check(n == 0 || recv(s, buf, sizeof(buf), MSG_DONTWAIT) == (ssize_t)n, "%s: recv: %s", what, strerror(errno));
	zdtm_check(memcmp(buf, want, n) == 0, "%s: read %.16s, not %s", what, buf, want);
	zdtm_check(recv(s, buf, sizeof(buf), MSG_DONTWAIT) == 0, "%s: no end of file: %s", what, strerror(errno));
	zdtm_check(getsockname(s, (struct sockaddr *)&name, &len) == 0 && strcmp(name.sun_path, addr.sun_path) == 0,
		   "%s: named %s, not the listener's %s", what, name.sun_path, addr.sun_path);
}

int main(void)
{
	int l, bye, empty, live, c;
	pid_t kid;
	char buf[8];

	zdtm_init();
	zdtm_path(addr.sun_path, sizeof(addr.sun_path), "closed.sock");
	unlink(addr.sun_path);
	l = socket(AF_UNIX, SOCK_STREAM, 0);
	zdtm_check(l >= 0 && bind(l, (struct sockaddr *)&addr, sizeof(addr)) == 0 && listen(l, 4) == 0, "listen: %s", strerror(errno));
	c = client();
	zdtm_check(send(c, "bye", 3, 0) == 3, "send: %s", strerror(errno));
	close(c);
	bye = accept(l, NULL, NULL);
	close(client());
	empty = accept(l, NULL, NULL);
	kid = fork();
	if (kid == 0) {
		int k = client();
		while (recv(k, buf, 1, 0) == 1)
			send(k, buf, 1, 0);
		_exit(0);
	}
	zdtm_kid(kid);
	live = accept(l, NULL, NULL);
	zdtm_check(bye >= 0 && empty >= 0 && live >= 0, "accept: %s", strerror(errno));
	zdtm_ready();
	zdtm_wait();
	check_closed(bye, zdtm_sabotage == 1 ? "bye!" : "bye", "the connection with bytes left");
	check_closed(empty, "", "the empty connection");
	zdtm_check(send(live, "x", 1, 0) == 1 && recv(live, buf, 1, 0) == 1 && buf[0] == 'x', "the live connection does not echo");
	close(client());
	c = accept(l, NULL, NULL);
	zdtm_check(c >= 0, "the listener no longer accepts: %s", strerror(errno));
	zdtm_pass();
}
