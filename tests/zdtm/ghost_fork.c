/*
 * ghost_fork: one unlinked file opened read-write by several processes
 * after fork, through descriptions of their own.
 *
 * State: gf.file, 3 pages of data, unlinked while open:
 *   root   fd 10 O_RDWR (opened by path), fd 11 O_RDONLY reopened through
 *          /proc/self/fd/10 (a second description)
 *   child1 opened gf.file O_RDWR by path itself before the unlink (fd 12,
 *          its own description), and inherited 10
 *   child2 forked after the unlink: reopened /proc/self/fd/10 O_RDWR (fd
 *          12, its own description), and inherited 10 and 11
 * Verified: every fd of every process is the same inode (st_dev, st_ino),
 * unlinked (no link) and named gf.file; after restore what one process
 * writes through its own description the others read through theirs, and
 * a size set by one is the size all see.
 */
#include "zdtm.h"

#include <sys/stat.h>

#define SIZE (3 * 4096)

struct kid {
	pid_t pid;
	int cmd[2], reply[2];
};

static struct kid kids[2];

struct msg {
	char op;	/* 'w' write, 'r' read and compare, 's' stat */
	off_t off;
	size_t len;
	uint64_t seed;
	off_t size;	/* ftruncate after 'w' when non-zero */
};

struct answer {
	int ok;
	dev_t dev;
	ino_t ino;
	nlink_t nlink;
	off_t size;
	char why[200];
};

static void path(char *buf, const char *name)
{
	zdtm_path(buf, 4096, name);
}

static void full_read(int fd, void *b, size_t len)
{
	size_t off = 0;
	while (off < len) {
		ssize_t r = read(fd, (char *)b + off, len - off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			_exit(7);
		off += r;
	}
}

/* A child serves requests on its own description (fd 12). */
static void kid_main(struct kid *k)
{
	static char b[SIZE], want[SIZE];
	struct msg m;
	struct answer a;
	struct stat st = { 0 };

	close(k->cmd[1]);
	close(k->reply[0]);
	for (;;) {
		full_read(k->cmd[0], &m, sizeof(m));
		memset(&a, 0, sizeof(a));
		a.ok = 1;
		if (m.op == 'w') {
			zdtm_fill(b, sizeof(b), m.seed);
			if (pwrite(12, b, m.len, m.off) != (ssize_t)m.len || (m.size && ftruncate(12, m.size))) {
				a.ok = 0;
				snprintf(a.why, sizeof(a.why), "write: %s", strerror(errno));
			}
		} else if (m.op == 'r') {
			zdtm_fill(want, sizeof(want), m.seed);
			if (pread(12, b, m.len, m.off) != (ssize_t)m.len || memcmp(b, want, m.len)) {
				a.ok = 0;
				snprintf(a.why, sizeof(a.why), "%zu bytes at %lld differ from what the others wrote", m.len,
					 (long long)m.off);
			}
		}
		for (int fd = 10; fd <= 12; fd++) {
			struct stat s;
			/* Child 1 was forked before the root opened fd 11. */
			if (fd == 11 && fcntl(fd, F_GETFD) < 0)
				continue;
			if (fstat(fd, &s) || (fd > 10 && (s.st_dev != st.st_dev || s.st_ino != st.st_ino))) {
				a.ok = 0;
				snprintf(a.why, sizeof(a.why), "fd %d is another file than fd 10", fd);
			}
			if (fd == 10)
				st = s;
		}
		a.dev = st.st_dev, a.ino = st.st_ino, a.nlink = st.st_nlink, a.size = st.st_size;
		if (write(k->reply[1], &a, sizeof(a)) != sizeof(a))
			_exit(8);
	}
}

static struct answer ask(int i, struct msg m)
{
	struct answer a;
	size_t off = 0;
	long long deadline = zdtm_now_ms() + 10000;

	zdtm_check(write(kids[i].cmd[1], &m, sizeof(m)) == sizeof(m), "write to child %d: %s", i + 1, strerror(errno));
	fcntl(kids[i].reply[0], F_SETFL, O_NONBLOCK);
	while (off < sizeof(a)) {
		ssize_t r = read(kids[i].reply[0], (char *)&a + off, sizeof(a) - off);
		if (r > 0) {
			off += r;
			continue;
		}
		zdtm_check(r < 0 && errno == EAGAIN, "child %d: %s", i + 1, r ? strerror(errno) : "EOF");
		zdtm_check(zdtm_now_ms() < deadline, "child %d did not answer within 10 s", i + 1);
		zdtm_sleep_ms(2);
	}
	zdtm_check(a.ok, "child %d: %s", i + 1, a.why);
	return a;
}

static void start_kid(int i)
{
	if (pipe(kids[i].cmd) || pipe(kids[i].reply))
		zdtm_die("pipe: %s", strerror(errno));
	kids[i].pid = fork();
	if (kids[i].pid < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (kids[i].pid == 0) {
		char p[4096];
		if (i == 0)
			path(p, "gf.file");
		else
			snprintf(p, sizeof(p), "/proc/self/fd/10");
		int fd = open(p, O_RDWR);
		if (fd < 0 || dup2(fd, 12) != 12)
			_exit(9);
		close(fd);
		/* Tell the root the description is open. */
		struct answer a = { .ok = 1 };
		if (write(kids[i].reply[1], &a, sizeof(a)) != sizeof(a))
			_exit(8);
		kid_main(&kids[i]);
	}
	zdtm_kid(kids[i].pid);
	close(kids[i].cmd[0]);
	close(kids[i].reply[1]);
	struct answer a;
	if (read(kids[i].reply[0], &a, sizeof(a)) != sizeof(a) || !a.ok)
		zdtm_die("child %d did not open its description", i + 1);
}

static void check_link(int fd)
{
	char lp[64], link[4096], want[4200], p[4096];
	ssize_t n;

	snprintf(lp, sizeof(lp), "/proc/self/fd/%d", fd);
	n = readlink(lp, link, sizeof(link) - 1);
	zdtm_check(n > 0, "readlink fd %d: %s", fd, strerror(errno));
	link[n] = 0;
	path(p, "gf.file");
	snprintf(want, sizeof(want), "%s (deleted)", p);
	zdtm_check(!strcmp(link, want), "fd %d links to %s, expected %s", fd, link, want);
}

static void sabotage(void)
{
	char p[4096];
	int fd;

	switch (zdtm_sabotage) {
	case 1: /* the root's second description became a file of its own */
		path(p, "gf.copy");
		fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0600);
		unlink(p);
		dup2(fd, 11);
		break;
	case 2: /* the file shrank */
		ftruncate(10, SIZE - 1);
		break;
	case 3: /* a byte changed */
		pwrite(10, "!", 1, 100);
		break;
	}
}

int main(void)
{
	static char b[SIZE], want[SIZE];
	char p[4096];
	struct stat st, s;
	struct answer a[2];

	zdtm_init();
	path(p, "gf.file");
	int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || dup2(fd, 10) != 10)
		zdtm_die("open %s: %s", p, strerror(errno));
	close(fd);
	zdtm_fill(b, SIZE, 0x7700);
	if (pwrite(10, b, SIZE, 0) != SIZE)
		zdtm_die("write: %s", strerror(errno));
	start_kid(0);
	if (unlink(p))
		zdtm_die("unlink: %s", strerror(errno));
	fd = open("/proc/self/fd/10", O_RDONLY);
	if (fd < 0 || dup2(fd, 11) != 11)
		zdtm_die("reopen: %s", strerror(errno));
	close(fd);
	start_kid(1);

	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(fstat(10, &st) == 0 && fstat(11, &s) == 0, "fstat: %s", strerror(errno));
	zdtm_check(st.st_dev == s.st_dev && st.st_ino == s.st_ino, "the root's fds 10 and 11 are two files");
	zdtm_check(st.st_nlink == 0, "the file has %lu links", (unsigned long)st.st_nlink);
	zdtm_check(st.st_size == SIZE, "size %lld, expected %d", (long long)st.st_size, SIZE);
	check_link(10);
	check_link(11);
	zdtm_fill(want, SIZE, 0x7700);
	zdtm_check(pread(11, b, SIZE, 0) == SIZE && !memcmp(b, want, SIZE), "the data differs");
	for (int i = 0; i < 2; i++) {
		a[i] = ask(i, (struct msg){ .op = 's' });
		zdtm_check(a[i].dev == st.st_dev && a[i].ino == st.st_ino, "child %d holds another file than the root", i + 1);
		zdtm_check(a[i].nlink == 0 && a[i].size == SIZE, "child %d sees %lu links and %lld bytes", i + 1,
			   (unsigned long)a[i].nlink, (long long)a[i].size);
	}
	/* The root writes; both children read it through their own fd 12. */
	zdtm_fill(b, SIZE, 0x7800);
	zdtm_check(pwrite(10, b, 1000, 5000) == 1000, "pwrite: %s", strerror(errno));
	ask(0, (struct msg){ .op = 'r', .off = 5000, .len = 1000, .seed = 0x7800 });
	ask(1, (struct msg){ .op = 'r', .off = 5000, .len = 1000, .seed = 0x7800 });
	/* Child 1 writes and grows the file; the root and child 2 see it. */
	ask(0, (struct msg){ .op = 'w', .off = 100, .len = 300, .seed = 0x7900, .size = 5 * 4096 });
	zdtm_fill(want, SIZE, 0x7900);
	zdtm_check(pread(11, b, 300, 100) == 300 && !memcmp(b, want, 300), "the root does not read what child 1 wrote");
	zdtm_check(fstat(10, &st) == 0 && st.st_size == 5 * 4096, "the root sees %lld bytes after child 1 grew the file",
		   (long long)st.st_size);
	a[1] = ask(1, (struct msg){ .op = 'r', .off = 100, .len = 300, .seed = 0x7900 });
	zdtm_check(a[1].size == 5 * 4096, "child 2 sees %lld bytes after child 1 grew the file", (long long)a[1].size);
	/* Child 2 writes; child 1 reads. */
	ask(1, (struct msg){ .op = 'w', .off = 9000, .len = 64, .seed = 0x7a00 });
	ask(0, (struct msg){ .op = 'r', .off = 9000, .len = 64, .seed = 0x7a00 });
	zdtm_pass();
}
