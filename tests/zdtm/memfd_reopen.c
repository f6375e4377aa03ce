/*
 * memfd_reopen: a memfd reopened through /proc/PID/fd (open file
 * descriptions of their own), and memfd mappings whose descriptor is
 * closed.
 *
 * State:
 *   mr.one  fd 10 O_RDWR (memfd_create), offset 100; fd 11 reopened
 *           through /proc/self/fd/10 O_RDONLY, offset 3000; fd 12 reopened
 *           O_RDWR|O_APPEND|O_NONBLOCK, offset 0
 *   mr.two  MAP_SHARED rw by the root, which closed its descriptor; the
 *           child keeps one (fd 13, inherited) and maps nothing
 *   mr.three MAP_SHARED rw by the root and the child (inherited), no
 *           descriptor anywhere
 * Verified: the flags and offset of each of 10, 11, 12; the three are
 * one inode (fstat) but not one description (kcmp); what fd 10 writes
 * fd 11 reads, fd 12 appends at the end; contents of mr.two and
 * mr.three; the child's write through fd 13 is seen in the root's
 * mapping of mr.two, and the root's and the child's mappings of
 * mr.three are one.
 */
#include "zdtm.h"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <linux/kcmp.h>

#define PG 4096
#define LEN (4 * PG)

static char *two, *three;
static int to_kid[2], from_kid[2];

static int reopen(int fd, int flags, int target)
{
	char p[64];
	int n;
	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	n = open(p, flags);
	if (n < 0 || dup2(n, target) != target)
		zdtm_die("reopen %s: %s", p, strerror(errno));
	close(n);
	return target;
}

static char *shared_memfd(const char *name, uint64_t seed, int *keep)
{
	static char buf[LEN];
	int fd = memfd_create(name, 0);
	char *m;

	zdtm_fill(buf, LEN, seed);
	if (fd < 0 || write(fd, buf, LEN) != LEN)
		zdtm_die("memfd %s: %s", name, strerror(errno));
	m = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		zdtm_die("mmap %s: %s", name, strerror(errno));
	if (keep)
		*keep = fd;
	else
		close(fd);
	return m;
}

/* The child: on 'w', writes "kid" at mr.two + PG through fd 13 and copies
 * mr.three[0] to mr.three[PG]; answers. */
static void kid(void)
{
	char x;
	while (read(to_kid[0], &x, 1) == 1) {
		if (pwrite(13, "kid", 3, PG) != 3)
			_exit(4);
		three[PG] = three[0];
		if (write(from_kid[1], &x, 1) != 1)
			_exit(3);
	}
	_exit(0);
}

static void check_fd(int fd, int flags, off_t off)
{
	int fl = fcntl(fd, F_GETFL) & ~0100000; /* O_LARGEFILE, which memfd_create sets */
	zdtm_check(fl == flags, "fd %d flags %o, expected %o", fd, fl, flags);
	zdtm_check(lseek(fd, 0, SEEK_CUR) == off, "fd %d offset %lld, expected %lld", fd, (long long)lseek(fd, 0, SEEK_CUR),
		   (long long)off);
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* fd 11 shares fd 10's description */
		dup2(10, 11);
		break;
	case 2: /* fd 12 lost O_NONBLOCK */
		fcntl(12, F_SETFL, O_APPEND);
		break;
	case 3: /* mr.two is a copy of its own */
		mmap(two, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, 10, 0);
		break;
	}
}

int main(void)
{
	static char buf[LEN];
	struct stat a, b, c;
	pid_t pid, me = getpid();
	int one, keep, t;
	char x;

	zdtm_init();
	one = memfd_create("mr.one", 0);
	zdtm_fill(buf, LEN, 0x3100);
	if (one < 0 || write(one, buf, LEN) != LEN || dup2(one, 10) != 10)
		zdtm_die("memfd: %s", strerror(errno));
	close(one);
	reopen(10, O_RDONLY, 11);
	reopen(10, O_RDWR | O_APPEND | O_NONBLOCK, 12);
	lseek(10, 100, SEEK_SET);
	lseek(11, 3000, SEEK_SET);
	lseek(12, 0, SEEK_SET);
	two = shared_memfd("mr.two", 0x3200, &keep);
	if (dup2(keep, 13) != 13)
		zdtm_die("dup2: %s", strerror(errno));
	close(keep);
	three = shared_memfd("mr.three", 0x3300, NULL);
	if (pipe(to_kid) || pipe(from_kid))
		zdtm_die("pipe: %s", strerror(errno));
	pid = fork();
	if (pid < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (pid == 0)
		kid();
	zdtm_kid(pid);
	close(13);

	zdtm_ready();
	zdtm_wait();
	sabotage();

	check_fd(10, O_RDWR, 100);
	check_fd(11, O_RDONLY, 3000);
	check_fd(12, O_RDWR | O_APPEND | O_NONBLOCK, 0);
	zdtm_check(!fstat(10, &a) && !fstat(11, &b) && !fstat(12, &c), "fstat: %s", strerror(errno));
	zdtm_check(a.st_ino == b.st_ino && a.st_ino == c.st_ino && a.st_dev == b.st_dev, "fds 10, 11, 12 are not one memfd");
	zdtm_check(syscall(SYS_kcmp, me, me, KCMP_FILE, 10, 11) != 0 && syscall(SYS_kcmp, me, me, KCMP_FILE, 10, 12) != 0 &&
			   syscall(SYS_kcmp, me, me, KCMP_FILE, 11, 12) != 0,
		   "fds 10, 11 and 12 share a description");
	zdtm_fill(buf, LEN, 0x3100);
	zdtm_check(pread(11, buf + LEN / 2, LEN / 2, 0) == LEN / 2 && !memcmp(buf, buf + LEN / 2, LEN / 2), "mr.one differs");
	zdtm_check(pwrite(10, "ten", 3, 5) == 3 && pread(11, buf, 3, 5) == 3 && !memcmp(buf, "ten", 3),
		   "a write through fd 10 is not read through fd 11");
	zdtm_check(write(12, "end", 3) == 3 && lseek(12, 0, SEEK_CUR) == LEN + 3 && lseek(10, 0, SEEK_END) == LEN + 3,
		   "fd 12 does not append");
	zdtm_fill(buf, LEN, 0x3200);
	zdtm_check(!memcmp(two, buf, LEN), "mr.two differs");
	zdtm_fill(buf, LEN, 0x3300);
	zdtm_check(!memcmp(three, buf, LEN), "mr.three differs");
	three[0] = 'T';
	zdtm_check(write(to_kid[1], "w", 1) == 1 && read(from_kid[0], &x, 1) == 1, "the child does not answer");
	zdtm_check(!memcmp(two + PG, "kid", 3), "the child's write through its descriptor of mr.two is not in the root's mapping");
	t = three[PG];
	zdtm_check(t == 'T', "the root and the child do not share mr.three");
	zdtm_pass();
}
