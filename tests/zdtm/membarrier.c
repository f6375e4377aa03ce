/*
 * membarrier: the membarrier(2) registrations of each process (per address
 * space).
 *
 * State: the root registered for private expedited, private expedited
 * sync-core, private expedited rseq and global expedited barriers; a child
 * forked afterwards, which registered for private expedited only (what a
 * fork inherits is checked at setup and the same after restore).
 * Verified: MEMBARRIER_CMD_GET_REGISTRATIONS of both (the child reports
 * through a pipe on request); the registered commands run (a private
 * expedited barrier without registration fails with EPERM).
 */
#include "zdtm.h"

#include <sys/syscall.h>

#define CMD_QUERY 0
#define CMD_GLOBAL_EXPEDITED (1 << 1)
#define CMD_REGISTER_GLOBAL_EXPEDITED (1 << 2)
#define CMD_PRIVATE_EXPEDITED (1 << 3)
#define CMD_REGISTER_PRIVATE_EXPEDITED (1 << 4)
#define CMD_PRIVATE_EXPEDITED_SYNC_CORE (1 << 5)
#define CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE (1 << 6)
#define CMD_PRIVATE_EXPEDITED_RSEQ (1 << 7)
#define CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ (1 << 8)
#define CMD_GET_REGISTRATIONS (1 << 9)

static long mb(int cmd)
{
	return syscall(SYS_membarrier, cmd, 0, 0);
}

static const long root_cmds[] = { CMD_REGISTER_PRIVATE_EXPEDITED, CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE,
				  CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, CMD_REGISTER_GLOBAL_EXPEDITED };

int main(void)
{
	int req[2], ans[2];
	long root_regs, child_regs, q, got;
	pid_t child;
	char c;

	zdtm_init();
	q = mb(CMD_QUERY);
	if (q < 0 || !(q & CMD_GET_REGISTRATIONS))
		zdtm_die("membarrier lacks MEMBARRIER_CMD_GET_REGISTRATIONS (Linux 6.3): query %#lx", q);
	for (unsigned i = 0; i < sizeof(root_cmds) / sizeof(root_cmds[0]); i++)
		if (mb(root_cmds[i]))
			zdtm_die("membarrier register %#lx: %s", root_cmds[i], strerror(errno));
	root_regs = mb(CMD_GET_REGISTRATIONS);
	if (pipe(req) || pipe(ans))
		zdtm_die("pipe: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0) {
		long r = mb(CMD_GET_REGISTRATIONS);
		/* What a fork inherits, then its own registration. */
		if (write(ans[1], &r, sizeof(r)) != sizeof(r) || mb(CMD_REGISTER_PRIVATE_EXPEDITED))
			_exit(2);
		for (;;) {
			if (read(req[0], &c, 1) != 1) {
				if (errno == EINTR)
					continue;
				_exit(3);
			}
			r = mb(CMD_GET_REGISTRATIONS);
			if (mb(CMD_PRIVATE_EXPEDITED))
				r = -1;
			if (write(ans[1], &r, sizeof(r)) != sizeof(r))
				_exit(4);
		}
	}
	zdtm_kid(child);
	if (read(ans[0], &got, sizeof(got)) != sizeof(got))
		zdtm_die("the child did not report");
	zdtm_log("registrations: root %#lx, a fresh fork %#lx", root_regs, got);
	if (write(req[1], "?", 1) != 1 || read(ans[0], &child_regs, sizeof(child_regs)) != sizeof(child_regs) || child_regs < 0)
		zdtm_die("the child did not report");
	zdtm_ready();
	zdtm_wait();

	switch (zdtm_sabotage) {
	case 1: /* one more registration */
		mb(CMD_REGISTER_GLOBAL_EXPEDITED);
		root_regs = root_regs & ~CMD_REGISTER_GLOBAL_EXPEDITED;
		break;
	case 2: /* a registration missing: the expectation has one more */
		root_regs |= 1 << 12;
		break;
	}
	got = mb(CMD_GET_REGISTRATIONS);
	zdtm_check(got == root_regs, "root: registrations %#lx, were %#lx", got, root_regs);
	zdtm_check(mb(CMD_PRIVATE_EXPEDITED) == 0, "root: private expedited barrier: %s", strerror(errno));
	zdtm_check(mb(CMD_PRIVATE_EXPEDITED_SYNC_CORE) == 0, "root: sync-core barrier: %s", strerror(errno));
	zdtm_check(mb(CMD_GLOBAL_EXPEDITED) == 0, "root: global expedited barrier: %s", strerror(errno));
	zdtm_check(write(req[1], "?", 1) == 1 && read(ans[0], &got, sizeof(got)) == sizeof(got), "the child does not answer");
	zdtm_check(got >= 0, "child: private expedited barrier failed");
	zdtm_check(got == child_regs, "child: registrations %#lx, were %#lx", got, child_regs);
	zdtm_pass();
}
