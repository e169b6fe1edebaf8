# bash completion for ctsyncd(8)
_ctsyncd() {
    local cur prev
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}
    local commands="status commit dump stats resync bulk flush flush-kernel kill reload reload-kernel reload-keys genkey convert doctor"
    local flags="-C -d -c -f -F -i -e -k -s -R -n -B -t -v -h --json --help --version"
    case "$prev" in
        -C|convert)
            COMPREPLY=($(compgen -f -- "$cur"))
            return ;;
        -s|stats)
            COMPREPLY=($(compgen -W "network cache runtime link rsqueue queue process expect" -- "$cur"))
            return ;;
        -f|flush|dump)
            COMPREPLY=($(compgen -W "internal external" -- "$cur"))
            return ;;
        -c|-i|-e|-F|-R)
            COMPREPLY=($(compgen -W "ct expect" -- "$cur"))
            return ;;
        doctor)
            COMPREPLY=($(compgen -W "--json --upstream-idle-timeout -C" -- "$cur"))
            return ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$flags" -- "$cur"))
    elif [[ $COMP_CWORD -eq 1 ]]; then
        COMPREPLY=($(compgen -W "$commands" -- "$cur"))
    fi
}
complete -F _ctsyncd ctsyncd
