/*
 * traced: a child held in a ptrace stop by its parent, as a debugger in
 * the tree holds its debuggee. The kernel offers no way to make a tracer
 * attach again and stop the thread where it was: a checkpoint must
 * refuse it by name, and leave both running as they were.
 * Verified: the child is still in the ptrace stop its parent put it in
 * (waitpid answers nothing new, PTRACE_PEEKDATA works) and holds its
 * value; it goes on once the parent lets it.
 */
#include "zdtm.h"

#include <sys/ptrace.h>
#include <sys/wait.h>

static volatile long value = 42;

int main(void)
{
	int status;
	pid_t child;

	zdtm_init();
	child = fork();
	zdtm_check(child >= 0, "fork: %s", strerror(errno));
	if (child == 0) {
		for (;;)
			pause();
	}
	zdtm_kid(child);
	zdtm_check(ptrace(PTRACE_SEIZE, child, 0, 0) == 0, "PTRACE_SEIZE: %s", strerror(errno));
	zdtm_check(ptrace(PTRACE_INTERRUPT, child, 0, 0) == 0, "PTRACE_INTERRUPT: %s", strerror(errno));
	zdtm_check(waitpid(child, &status, __WALL) == child && WIFSTOPPED(status), "waitpid for the interrupt stop");
	zdtm_ready();
	zdtm_wait();
	zdtm_check(waitpid(child, &status, WNOHANG | __WALL) == 0, "the child reported a new state while held");
	errno = 0;
	long got = ptrace(PTRACE_PEEKDATA, child, (void *)&value, 0);
	zdtm_check(errno == 0, "PTRACE_PEEKDATA: %s (no longer in its ptrace stop)", strerror(errno));
	zdtm_check(got == (zdtm_sabotage == 1 ? 43 : 42), "the child's value is %ld", got);
	zdtm_check(ptrace(PTRACE_DETACH, child, 0, 0) == 0, "PTRACE_DETACH: %s", strerror(errno));
	zdtm_pass();
}
