/*
 * ns_host: a descriptor of the host's network namespace (the one lpm runs
 * in) held open at fd 3. Not in the replay list: `host_namespace_is_refused`
 * expects the checkpoint to refuse it by name and the program to run on.
 * Verified: fd 3 still names the namespace the program is in.
 */
#include "zdtm.h"

static int same_ns(int fd)
{
	struct stat a, b;

	return !fstat(fd, &a) && !stat("/proc/self/ns/net", &b) && a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}

int main(void)
{
	int fd;

	zdtm_init();
	fd = open("/proc/self/ns/net", O_RDONLY);
	if (fd < 0 || (fd != 3 && dup2(fd, 3) != 3))
		zdtm_die("open /proc/self/ns/net at fd 3: %s", strerror(errno));
	if (fd != 3)
		close(fd);
	zdtm_ready();
	zdtm_wait();
	if (zdtm_sabotage == 1) /* fd 3 names something else */
		dup2(open("/dev/null", O_RDONLY), 3);
	zdtm_check(same_ns(3), "fd 3 does not name the program's network namespace");
	zdtm_pass();
}
