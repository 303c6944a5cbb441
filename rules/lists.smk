# The per-slide file lists that stages read as `@FILE` (rules/common.smk, file_list): a local job
# in Snakemake's own process, since it writes a text file and needs no env.


rule file_list:
    output:
        "results/lists/{name}.txt",
    log:
        "results/logs/lists/{name}.log",
    wildcard_constraints:
        name=r"[A-Za-z0-9_.-]+",
    localrule: True
    params:
        # the list's digest, not the list: a changed list is rewritten, and Snakemake's metadata
        # keeps a short string rather than thousands of paths. A function of the wildcards alone:
        # Snakemake neither records nor compares a param derived from the output.
        digest=list_digest_of("results"),
    run:
        write_file_list(output[0], log[0])
