/*
 * inotify_deleted: inotify watches on unlinked files still open.
 *
 * State: one instance, non-blocking: watch 1 on the directory of the
 * files (IN_CREATE); watch 2 on file "a", held open read-write by the
 * root; watch 3 on file "b", held open read-write by a child only; both
 * files unlinked (the IN_ATTRIB of each unlink read), nothing queued.
 * Verified: wd and mask of every watch in fdinfo; nothing queued; a write
 * to "a" reports IN_MODIFY on wd 2; closing "a" reports IN_CLOSE_WRITE,
 * IN_DELETE_SELF and IN_IGNORED on wd 2; the child's exit reports the
 * same on wd 3; the directory watch still reports a file created.
 */
#include "zdtm.h"

#include <poll.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>

#define MASK_FILE (IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB | IN_DELETE_SELF)

static int in, fa, wd_dir, wd_a, wd_b;
static pid_t child;
static char masks[512], dir[4096];

/* "wd:mask" of every watch, in fdinfo order. */
static void masks_of(char *out, size_t size)
{
	char path[64], text[4096];
	const char *l;
	size_t off = 0;

	out[0] = 0;
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", in);
	if (zdtm_read_file(path, text, sizeof(text)) < 0)
		return;
	for (l = strstr(text, "inotify wd:"); l; l = strstr(l + 1, "inotify wd:")) {
		unsigned wd, mask;

		if (sscanf(l, "inotify wd:%x ino:%*x sdev:%*x mask:%x", &wd, &mask) == 2)
			off += snprintf(out + off, size - off, "%x:%x ", wd, mask);
	}
}

/* Reads events until `n` have come (waiting up to 10 s for each); they go to wds/masks. */
static int events(int n, int *wds, unsigned *ms)
{
	char buf[4096] __attribute__((aligned(8)));
	int got = 0;

	while (got < n) {
		struct pollfd p = { .fd = in, .events = POLLIN };
		ssize_t len, off;

		if (poll(&p, 1, 10000) != 1)
			break;
		len = read(in, buf, sizeof(buf));
		if (len <= 0)
			break;
		for (off = 0; off < len && got < n;) {
			struct inotify_event *e = (struct inotify_event *)(buf + off);

			wds[got] = e->wd;
			ms[got++] = e->mask;
			off += sizeof(*e) + e->len;
		}
	}
	return got;
}

static int queued(void)
{
	int n = -1;

	ioctl(in, FIONREAD, &n);
	return n;
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* the watch on "a" is gone */
		inotify_rm_watch(in, wd_a);
		break;
	case 2: /* "a" was closed already: its events are behind */
		close(fa);
		fa = open("/dev/null", O_WRONLY);
		break;
	}
}

int main(void)
{
	int wds[8], ready[2], fb, n;
	unsigned ms[8];
	char path[4200], c, now[512];

	zdtm_init();
	if (!getcwd(dir, sizeof(dir) - 16))
		zdtm_die("getcwd: %s", strerror(errno));
	strcat(dir, "/watched");
	if (mkdir(dir, 0700) && errno != EEXIST)
		zdtm_die("mkdir: %s", strerror(errno));
	in = inotify_init1(IN_NONBLOCK);
	if (in < 0)
		zdtm_die("inotify_init1: %s", strerror(errno));
	wd_dir = inotify_add_watch(in, dir, IN_CREATE);
	snprintf(path, sizeof(path), "%s/a", dir);
	fa = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	wd_a = inotify_add_watch(in, path, MASK_FILE);
	snprintf(path, sizeof(path), "%s/b", dir);
	fb = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	wd_b = inotify_add_watch(in, path, MASK_FILE);
	if (fa < 0 || fb < 0 || wd_dir < 0 || wd_a < 0 || wd_b < 0)
		zdtm_die("set up: %s", strerror(errno));
	if (pipe(ready))
		zdtm_die("pipe: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0) {
		close(fa);
		close(in);
		if (write(fb, "b", 1) != 1 || write(ready[1], "r", 1) != 1)
			_exit(3);
		for (;;)
			pause();
	}
	zdtm_kid(child);
	close(fb);
	if (read(ready[0], &c, 1) != 1)
		zdtm_die("child not ready");
	close(ready[0]);
	close(ready[1]);
	snprintf(path, sizeof(path), "%s/a", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/b", dir);
	unlink(path);
	/* Drain the events so far (creations, the child's write, the unlinks). */
	while (events(1, wds, ms) == 1 && queued() > 0)
		;
	while (queued() > 0)
		events(1, wds, ms);
	masks_of(masks, sizeof(masks));
	zdtm_ready();
	zdtm_wait();
	sabotage();

	masks_of(now, sizeof(now));
	zdtm_check(!strcmp(now, masks), "watches %s, were %s", now, masks);
	zdtm_check(queued() == 0, "%d bytes of events queued", queued());
	zdtm_check(write(fa, "a", 1) == 1, "write a: %s", strerror(errno));
	n = events(1, wds, ms);
	zdtm_check(n == 1 && wds[0] == wd_a && ms[0] == IN_MODIFY, "after a write: %d events, first wd %d mask %#x", n, wds[0], ms[0]);
	close(fa);
	n = events(3, wds, ms);
	zdtm_check(n == 3 && wds[0] == wd_a && ms[0] == IN_CLOSE_WRITE && wds[1] == wd_a && ms[1] == IN_DELETE_SELF &&
			   wds[2] == wd_a && ms[2] == IN_IGNORED,
		   "after closing a: %d events: %d/%#x %d/%#x %d/%#x", n, wds[0], ms[0], wds[1], ms[1], wds[2], ms[2]);
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	zdtm_nkids = 0;
	n = events(3, wds, ms);
	zdtm_check(n == 3 && wds[0] == wd_b && ms[0] == IN_CLOSE_WRITE && wds[1] == wd_b && ms[1] == IN_DELETE_SELF &&
			   wds[2] == wd_b && ms[2] == IN_IGNORED,
		   "after the child's exit: %d events: %d/%#x %d/%#x %d/%#x", n, wds[0], ms[0], wds[1], ms[1], wds[2], ms[2]);
	snprintf(path, sizeof(path), "%s/new", dir);
	close(open(path, O_CREAT | O_WRONLY, 0600));
	unlink(path);
	n = events(1, wds, ms);
	zdtm_check(n == 1 && wds[0] == wd_dir && ms[0] == IN_CREATE, "after a creation: %d events, wd %d mask %#x", n, wds[0], ms[0]);
	zdtm_pass();
}
