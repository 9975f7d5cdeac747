
# end.sh: closes sp_main (opened at the end of lib.sh), runs it in a subshell and passes all
# it prints through sed, which puts the token before every line; "@end STATUS" comes last
}
# fd 3: the channel itself, for a step that must learn whether sp-deploy still listens (the
# pipe to sed would take a line whoever reads); a step that leaves a process running closes it
exec 3>&1
{
  (sp_main "$@")
  printf '\n@end %s\n' "$?"
} | sed "s/^/$sp_token /"
