/*
 * userns: a process in a user namespace of its own (unshare
 * CLONE_NEWUSER, its uid and gid 0 mapped to the host's 0, one id each).
 * Not in the replay list: `user_namespace_is_refused` expects the
 * checkpoint to refuse it by name (a restore does not make user
 * namespaces yet: the ids and capabilities would come back in the host's)
 * and the program to run on.
 * Verified: still in a user namespace other than the host's (ZDTM_OUTER_NS
 * is not needed: /proc/self/uid_map shows one id), uid 0 inside, the maps.
 */
#include "zdtm.h"

#include <sched.h>

static void put(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);

	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		zdtm_die("write %s: %s", path, strerror(errno));
	close(fd);
}

static int map_is(const char *path, const char *want)
{
	char b[256];
	int fd = open(path, O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read(fd, b, sizeof(b) - 1);

	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return 0;
	b[n] = 0;
	return !strcmp(b, want);
}

int main(void)
{
	const char *map = "         0          0          1\n";

	zdtm_init();
	if (unshare(CLONE_NEWUSER))
		zdtm_die("unshare CLONE_NEWUSER: %s", strerror(errno));
	put("/proc/self/setgroups", "deny");
	put("/proc/self/uid_map", "0 0 1");
	put("/proc/self/gid_map", "0 0 1");
	zdtm_ready();
	zdtm_wait();
	if (zdtm_sabotage == 1) /* the root of the namespace gives up its uid */
		setresuid(65534, 65534, 65534);
	zdtm_check(getuid() == 0 && geteuid() == 0, "uid %d euid %d", getuid(), geteuid());
	zdtm_check(map_is("/proc/self/uid_map", map), "uid_map changed");
	zdtm_check(map_is("/proc/self/gid_map", map), "gid_map changed");
	zdtm_pass();
}
