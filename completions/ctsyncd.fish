# fish completion for ctsyncd(8)
set -l cmds status commit dump stats resync bulk flush flush-kernel kill reload reload-kernel reload-keys genkey convert doctor
complete -c ctsyncd -f
complete -c ctsyncd -n "not __fish_seen_subcommand_from $cmds" -a "$cmds"
complete -c ctsyncd -s C -r -F -d 'configuration file'
complete -c ctsyncd -s d -d 'run the daemon in the background'
complete -c ctsyncd -s c -d 'commit the external cache to the kernel'
complete -c ctsyncd -s f -d 'flush the caches'
complete -c ctsyncd -s F -d 'flush the kernel table'
complete -c ctsyncd -s i -d 'dump the internal cache'
complete -c ctsyncd -s e -d 'dump the external cache'
complete -c ctsyncd -s k -d 'stop the daemon'
complete -c ctsyncd -s s -d 'show counters'
complete -c ctsyncd -s R -d 'resync the internal cache with the kernel'
complete -c ctsyncd -s n -d 'ask the peers for their tables'
complete -c ctsyncd -s B -d 'send our table to the peers'
complete -c ctsyncd -s t -d 'flush the kernel table after the purge timeout'
complete -c ctsyncd -l json -d 'JSON output'
complete -c ctsyncd -s v -d 'version'
complete -c ctsyncd -s h -d 'usage'
complete -c ctsyncd -n "__fish_seen_subcommand_from stats" -a "network cache runtime link rsqueue queue process expect"
complete -c ctsyncd -n "__fish_seen_subcommand_from dump flush" -a "internal external"
complete -c ctsyncd -n "__fish_seen_subcommand_from convert" -F
complete -c ctsyncd -n "__fish_seen_subcommand_from doctor" -l upstream-idle-timeout -r -d 'idle timeout of an upstream balancer, seconds'
