/*
 * mdwe_refused: memory-deny-write-execute set (PR_SET_MDWE with
 * PR_MDWE_REFUSE_EXEC_GAIN): no writable mapping may become executable.
 * Not in the replay list: `mdwe_is_refused` expects the checkpoint to
 * refuse it by name (the restore does not set it again) and the program
 * to run on.
 * Verified: PR_GET_MDWE still reads the flag, and an anonymous mapping
 * still cannot be made writable and executable.
 */
#include "zdtm.h"

#include <sys/mman.h>
#include <sys/prctl.h>

#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#endif
#ifndef PR_MDWE_REFUSE_EXEC_GAIN
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif

static int wx_refused(void)
{
	void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p != MAP_FAILED) {
		munmap(p, 4096);
		return 0;
	}
	return errno == EACCES;
}

int main(void)
{
	long want = PR_MDWE_REFUSE_EXEC_GAIN;

	zdtm_init();
	if (prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0))
		zdtm_die("PR_SET_MDWE: %s", strerror(errno));
	if (!wx_refused())
		zdtm_die("a writable executable mapping was allowed under PR_SET_MDWE");
	zdtm_ready();
	zdtm_wait();
	if (zdtm_sabotage == 1) /* expects the flag cleared */
		want = 0;
	zdtm_check(prctl(PR_GET_MDWE, 0, 0, 0, 0) == want, "PR_GET_MDWE does not read the flag set");
	zdtm_check(wx_refused(), "a writable executable mapping is allowed");
	zdtm_pass();
}
