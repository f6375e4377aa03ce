/*
 * Seccomp filters (mode 2) under no_new_privs, shared by two threads: the
 * oldest makes sysinfo fail with errno 77 and uname with 79, the newest
 * (installed with SECCOMP_FILTER_FLAG_LOG) makes sysinfo fail with 78. The
 * newest filter's errno wins, so the order of the chain shows. After
 * restore both threads see the same results and two filters.
 */
#include "zdtm.h"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>

#define ALLOW BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
#define LOAD_NR BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr))
#define FAIL_IF(nr, err) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err))

static struct sock_filter oldest[] = { LOAD_NR, FAIL_IF(SYS_sysinfo, 77), FAIL_IF(SYS_uname, 79), ALLOW };
static struct sock_filter newest[] = { LOAD_NR, FAIL_IF(SYS_sysinfo, 78), ALLOW };
static struct sock_filter extra[] = { LOAD_NR, FAIL_IF(SYS_sysinfo, 77), ALLOW };

static pid_t thread_tid;
static char thread_fail[256];

static int install(struct sock_filter *f, unsigned short len, unsigned flags)
{
	struct sock_fprog prog = { .len = len, .filter = f };
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

/* "" when this thread sees the expected filters, else why not. */
static void check_self(char *why, size_t size)
{
	char path[64], text[4096], v[64];
	struct sysinfo si;
	struct utsname u;
	long r;

	why[0] = 0;
	errno = 0;
	r = syscall(SYS_sysinfo, &si);
	if (r != -1 || errno != 78) {
		snprintf(why, size, "sysinfo returned %ld errno %d, expected errno 78", r, errno);
		return;
	}
	errno = 0;
	r = uname(&u);
	if (r != -1 || errno != 79) {
		snprintf(why, size, "uname returned %ld errno %d, expected errno 79", r, errno);
		return;
	}
	snprintf(path, sizeof(path), "/proc/self/task/%ld/status", (long)syscall(SYS_gettid));
	if (zdtm_read_file(path, text, sizeof(text)) <= 0) {
		snprintf(why, size, "read %s", path);
		return;
	}
	if (!zdtm_field(text, "Seccomp", v, sizeof(v)) || strcmp(v, "2")) {
		snprintf(why, size, "Seccomp is %s, expected 2", v);
		return;
	}
	if (!zdtm_field(text, "Seccomp_filters", v, sizeof(v)) || strcmp(v, "2"))
		snprintf(why, size, "Seccomp_filters is %s, expected 2", v);
}

static void *worker(void *arg)
{
	(void)arg;
	thread_tid = syscall(SYS_gettid);
	while (!zdtm_stop)
		zdtm_sleep_ms(20);
	if (zdtm_sabotage == 3)
		install(extra, sizeof(extra) / sizeof(extra[0]), 0);
	check_self(thread_fail, sizeof(thread_fail));
	return NULL;
}

int main(void)
{
	char why[256];
	pthread_t t;

	zdtm_init();
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		zdtm_die("PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
	if (install(oldest, sizeof(oldest) / sizeof(oldest[0]), 0))
		zdtm_die("seccomp oldest: %s", strerror(errno));
	if (install(newest, sizeof(newest) / sizeof(newest[0]), SECCOMP_FILTER_FLAG_LOG))
		zdtm_die("seccomp newest: %s", strerror(errno));
	if (pthread_create(&t, NULL, worker, NULL))
		zdtm_die("pthread_create");
	while (!thread_tid)
		zdtm_sleep_ms(1);
	check_self(why, sizeof(why));
	if (why[0])
		zdtm_die("before ready: %s", why);

	zdtm_ready();
	zdtm_wait();

	switch (zdtm_sabotage) {
	case 1: /* one filter more in this thread */
		install(extra, sizeof(extra) / sizeof(extra[0]), 0);
		break;
	case 2: /* a newer filter in every thread changes sysinfo's errno */
		install(extra, sizeof(extra) / sizeof(extra[0]), SECCOMP_FILTER_FLAG_TSYNC);
		break;
	}
	check_self(why, sizeof(why));
	zdtm_check(!why[0], "main thread: %s", why);
	pthread_join(t, NULL);
	zdtm_check(!thread_fail[0], "thread %d: %s", thread_tid, thread_fail);
	zdtm_pass();
}
