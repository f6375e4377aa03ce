/*
 * eventfd: eventfd counters.
 *
 * State: a non-blocking counter holding 0x123456789 (wider than the 32-bit
 * initial value of eventfd(2)); a blocking EFD_SEMAPHORE counter at 3; an
 * empty close-on-exec counter shared with a child, which waits on it.
 * Verified: fdinfo eventfd-semaphore, F_GETFL and FD_CLOEXEC of each; the
 * exact count read back (once, then EAGAIN); the semaphore gives 1 three
 * times then EAGAIN; after restore the root posts 7 to the shared counter
 * and the child reads exactly 7 and exits 0.
 */
#include "zdtm.h"

#include <sys/eventfd.h>

#define BIG 0x123456789ULL

static int e_big, e_sem, e_kid;
static int fl_big, fl_sem, fl_kid;
static pid_t child;

static void child_main(void)
{
	uint64_t v;
	ssize_t r;

	do
		r = read(e_kid, &v, 8);
	while (r < 0 && errno == EINTR);
	if (r != 8) {
		zdtm_log("child: read %zd: %s", r, strerror(errno));
		_exit(3);
	}
	_exit(v == 7 ? 0 : 4);
}

static int semaphore(int fd)
{
	char path[64], text[1024], v[32];

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	if (zdtm_read_file(path, text, sizeof(text)) < 0 || !zdtm_field(text, "eventfd-semaphore", v, sizeof(v)))
		return -1;
	return atoi(v);
}

static void sabotage(void)
{
	uint64_t v = 1;

	switch (zdtm_sabotage) {
	case 1: /* the counter grew */
		write(e_big, &v, 8);
		break;
	case 2: /* the semaphore lost one */
		read(e_sem, &v, 8);
		break;
	case 3: /* the shared counter was posted before the root does */
		write(e_kid, &v, 8);
		break;
	case 4: /* flags lost */
		fcntl(e_big, F_SETFL, 0);
		break;
	}
}

int main(void)
{
	uint64_t v = BIG;
	int status;

	zdtm_init();
	e_big = eventfd(0, EFD_NONBLOCK);
	e_sem = eventfd(3, EFD_SEMAPHORE);
	e_kid = eventfd(0, EFD_CLOEXEC);
	if (e_big < 0 || e_sem < 0 || e_kid < 0)
		zdtm_die("eventfd: %s", strerror(errno));
	if (write(e_big, &v, 8) != 8)
		zdtm_die("write: %s", strerror(errno));
	fl_big = fcntl(e_big, F_GETFL);
	fl_sem = fcntl(e_sem, F_GETFL);
	fl_kid = fcntl(e_kid, F_GETFL);
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0)
		child_main();
	zdtm_kid(child);
	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(fcntl(e_big, F_GETFL) == fl_big, "F_GETFL %#o, was %#o", fcntl(e_big, F_GETFL), fl_big);
	zdtm_check(fcntl(e_sem, F_GETFL) == fl_sem, "semaphore F_GETFL changed");
	zdtm_check(fcntl(e_kid, F_GETFL) == fl_kid, "shared F_GETFL changed");
	zdtm_check(fcntl(e_kid, F_GETFD) == FD_CLOEXEC && fcntl(e_big, F_GETFD) == 0, "FD_CLOEXEC changed");
	zdtm_check(semaphore(e_sem) == 1 && semaphore(e_big) == 0, "eventfd-semaphore is %d and %d", semaphore(e_sem),
		   semaphore(e_big));
	zdtm_check(read(e_big, &v, 8) == 8, "read counter: %s", strerror(errno));
	zdtm_check(v == BIG, "counter %#llx, expected %#llx", (unsigned long long)v, BIG);
	zdtm_check(read(e_big, &v, 8) < 0 && errno == EAGAIN, "counter not empty after the read");
	fcntl(e_sem, F_SETFL, O_NONBLOCK);
	for (int i = 0; i < 3; i++) {
		zdtm_check(read(e_sem, &v, 8) == 8, "semaphore read %d: %s", i, strerror(errno));
		zdtm_check(v == 1, "semaphore read %d gave %llu", i, (unsigned long long)v);
	}
	zdtm_check(read(e_sem, &v, 8) < 0 && errno == EAGAIN, "semaphore held more than 3");
	v = 7;
	zdtm_check(write(e_kid, &v, 8) == 8, "post: %s", strerror(errno));
	status = zdtm_wait_kid(child, "finish");
	zdtm_check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child read a wrong value (status %#x)", status);
	zdtm_pass();
}
