/*
 * ns_fds_tree: descriptors of uts, ipc, mount and pid namespaces the tree
 * owns.
 *
 * State (under `unshare --fork --pid --mount-proc --net --uts --ipc`: the
 * program is pid 1 of its pid namespace, with a uts namespace named
 * "outer"): a child that made uts and ipc namespaces of its own (named
 * "inner") and sleeps; the program holds its own uts, ipc, mnt and pid
 * namespaces open, and the child's uts and ipc (one close-on-exec).
 * Verified: each descriptor names the namespace its process is in now
 * (inode of its /proc/PID/ns file), and a process entering each uts namespace
 * with setns finds its host name.
 */
#include "zdtm.h"

#include <sched.h>
#include <sys/syscall.h>
#include <sys/utsname.h>

enum { UTS, IPC, MNT, PID, CHILD_UTS, CHILD_IPC, N };
static const char *types[N] = { "uts", "ipc", "mnt", "pid", "uts", "ipc" };
static int fds[N];
static pid_t child;

static int same_ns(int fd, pid_t pid, const char *type)
{
	char path[64];
	struct stat a, b;

	snprintf(path, sizeof(path), "/proc/%d/ns/%s", pid, type);
	return !fstat(fd, &a) && !stat(path, &b) && a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}

/* The host name seen by a child that entered the uts namespace of fd: 1 if it is name. */
static int name_in(int fd, const char *name)
{
	int st;
	pid_t p = fork();

	if (p == 0) {
		struct utsname u;

		_exit(setns(fd, CLONE_NEWUTS) || uname(&u) ? 2 : !strcmp(u.nodename, name));
	}
	if (p < 0 || waitpid(p, &st, 0) != p || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* the child's uts descriptor names the program's */
		dup2(fds[UTS], fds[CHILD_UTS]);
		break;
	case 2: /* the mnt descriptor is gone */
		close(fds[MNT]);
		break;
	}
}

int main(void)
{
	int ready[2], i;
	char path[64], c;

	zdtm_init();
	if (getpid() != 1)
		zdtm_die("not pid 1 of a pid namespace (run under unshare --pid --fork)");
	if (sethostname("outer", 5))
		zdtm_die("sethostname: %s", strerror(errno));
	if (pipe(ready))
		zdtm_die("pipe: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0) {
		if (unshare(CLONE_NEWUTS | CLONE_NEWIPC) || sethostname("inner", 5) || write(ready[1], "r", 1) != 1)
			_exit(3);
		for (;;)
			pause();
	}
	zdtm_kid(child);
	if (read(ready[0], &c, 1) != 1)
		zdtm_die("the child made no namespaces");
	close(ready[0]);
	close(ready[1]);
	for (i = 0; i < N; i++) {
		snprintf(path, sizeof(path), "/proc/%d/ns/%s", i < CHILD_UTS ? getpid() : child, types[i]);
		fds[i] = open(path, O_RDONLY | (i == CHILD_IPC ? O_CLOEXEC : 0));
		if (fds[i] < 0)
			zdtm_die("open %s: %s", path, strerror(errno));
	}
	if (name_in(fds[UTS], "outer") != 1 || name_in(fds[CHILD_UTS], "inner") != 1)
		zdtm_die("host names not as set");
	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (i = 0; i < N; i++)
		zdtm_check(same_ns(fds[i], i < CHILD_UTS ? getpid() : child, types[i]), "descriptor %d (%s of %s) names another namespace", i,
			   types[i], i < CHILD_UTS ? "the program" : "the child");
	zdtm_check(!same_ns(fds[CHILD_UTS], getpid(), "uts") && !same_ns(fds[CHILD_IPC], getpid(), "ipc"),
		   "the child's namespaces are the program's");
	zdtm_check(fcntl(fds[CHILD_IPC], F_GETFD) == FD_CLOEXEC && fcntl(fds[UTS], F_GETFD) == 0, "FD_CLOEXEC changed");
	zdtm_check(name_in(fds[UTS], "outer") == 1 && name_in(fds[CHILD_UTS], "inner") == 1, "host names through the descriptors: %d %d",
		   name_in(fds[UTS], "outer"), name_in(fds[CHILD_UTS], "inner"));
	zdtm_pass();
}
