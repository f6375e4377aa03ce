/*
 * sock_outside: a unix stream socket connected to a listener the harness
 * holds (work dir, outside.sock), i.e. to a peer outside the tree. A
 * checkpoint must refuse it by name and leave the program running.
 * Verified: the socket is still connected and writable.
 */
#include "zdtm.h"

#include <sys/socket.h>
#include <sys/un.h>

static int fd;

int main(void)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	char path[100];

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
	zdtm_check(send(fd, "x", 1, MSG_NOSIGNAL) == 1, "send: %s", strerror(errno));
	zdtm_pass();
}
