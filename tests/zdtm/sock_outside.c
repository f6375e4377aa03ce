/*
 * sock_outside: a unix stream socket connected to a listener the harness
 * holds (work dir, outside.sock), i.e. to a peer outside the tree. A
 * checkpoint must refuse it by name and leave the program running; with
 * --ext-unix-sk it is dumped, and the restore connects it to that path
 * again (a new connection).
 * Verified: the socket is connected to the path and writable.
 */
#include "zdtm.h"

#include <sys/socket.h>
#include <sys/un.h>

static int fd;
static char path[100];

int main(void)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };

	zdtm_init();
	zdtm_path(path, sizeof(path), "outside.sock");
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)))
		zdtm_die("connect %s: %s", path, strerror(errno));
	zdtm_ready();
	zdtm_wait();
	if (zdtm_sabotage == 1)
		shutdown(fd, SHUT_WR);
	{
		struct sockaddr_un p;
		socklen_t l = sizeof(p);
		memset(&p, 0, sizeof(p));
		zdtm_check(!getpeername(fd, (struct sockaddr *)&p, &l) && !strcmp(p.sun_path, path), "peer \"%s\"",
			   p.sun_path);
	}
	zdtm_check(send(fd, "x", 1, MSG_NOSIGNAL) == 1, "send: %s", strerror(errno));
	zdtm_pass();
}
