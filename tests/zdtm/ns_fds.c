/*
 * ns_fds: network namespace descriptors held open.
 *
 * State (run under `unshare --net`: the root owns its network namespace):
 * the root holds /proc/self/ns/net open, with lo up there; a child that
 * made a network namespace of its own (lo down) and sleeps; the root holds
 * /proc/CHILD/ns/net open twice (two descriptions, one close-on-exec).
 * Verified: each descriptor names the namespace its process is in now
 * (inode of /proc/PID/ns/net), the two of the child's are still two
 * descriptions, and a process entering each with setns finds lo as it was
 * there (up in the root's, down in the child's).
 */
#include "zdtm.h"

#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#ifndef KCMP_FILE
#define KCMP_FILE 0
#endif

static int fd_self, fd_child, fd_child2;
static pid_t child;

static int lo_up(void)
{
	struct ifreq ifr;
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), up;

	if (s < 0)
		return -1;
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	up = ioctl(s, SIOCGIFFLAGS, &ifr) ? -1 : !!(ifr.ifr_flags & IFF_UP);
	close(s);
	return up;
}

static int set_lo_up(void)
{
	struct ifreq ifr;
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), r;

	if (s < 0)
		return -1;
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	r = ioctl(s, SIOCGIFFLAGS, &ifr);
	ifr.ifr_flags |= IFF_UP;
	if (!r)
		r = ioctl(s, SIOCSIFFLAGS, &ifr);
	close(s);
	return r;
}

/* lo's state seen by a child that entered the namespace of fd: 0 down, 1 up, else an error. */
static int lo_in(int fd)
{
	int st;
	pid_t p = fork();

	if (p == 0)
		_exit(setns(fd, CLONE_NEWNET) ? 10 : lo_up() < 0 ? 11 : lo_up());
	if (p < 0 || waitpid(p, &st, 0) != p || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

static int same_ns(int fd, pid_t pid)
{
	char path[64];
	struct stat a, b;

	snprintf(path, sizeof(path), "/proc/%d/ns/net", pid);
	return !fstat(fd, &a) && !stat(path, &b) && a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* the child's descriptor names the root's namespace */
		dup2(fd_self, fd_child);
		break;
	case 2: /* one description instead of two */
		dup2(fd_child, fd_child2);
		break;
	}
}

int main(void)
{
	int ready[2], flags;
	char path[64], c;

	zdtm_init();
	if (set_lo_up())
		zdtm_die("set lo up: %s", strerror(errno));
	if (pipe(ready))
		zdtm_die("pipe: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0) {
		if (unshare(CLONE_NEWNET) || write(ready[1], "r", 1) != 1)
			_exit(3);
		for (;;)
			pause();
	}
	zdtm_kid(child);
	if (read(ready[0], &c, 1) != 1)
		zdtm_die("the child made no network namespace");
	close(ready[0]);
	close(ready[1]);
	fd_self = open("/proc/self/ns/net", O_RDONLY);
	snprintf(path, sizeof(path), "/proc/%d/ns/net", child);
	fd_child = open(path, O_RDONLY);
	fd_child2 = open(path, O_RDONLY | O_CLOEXEC);
	if (fd_self < 0 || fd_child < 0 || fd_child2 < 0)
		zdtm_die("open ns: %s", strerror(errno));
	if (lo_in(fd_self) != 1 || lo_in(fd_child) != 0)
		zdtm_die("lo is %d in the root's namespace, %d in the child's", lo_in(fd_self), lo_in(fd_child));
	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(same_ns(fd_self, getpid()), "the root's descriptor names another namespace");
	zdtm_check(same_ns(fd_child, child) && same_ns(fd_child2, child), "the child's descriptors name another namespace");
	zdtm_check(!same_ns(fd_child, getpid()), "the child's namespace is the root's");
	zdtm_check(syscall(SYS_kcmp, getpid(), getpid(), KCMP_FILE, fd_child, fd_child2) != 0, "the child's descriptors share a description");
	flags = fcntl(fd_child2, F_GETFD);
	zdtm_check(flags == FD_CLOEXEC && fcntl(fd_child, F_GETFD) == 0, "FD_CLOEXEC changed");
	zdtm_check(lo_in(fd_self) == 1, "lo in the root's namespace: %d", lo_in(fd_self));
	zdtm_check(lo_in(fd_child) == 0, "lo in the child's namespace: %d", lo_in(fd_child));
	zdtm_pass();
}
