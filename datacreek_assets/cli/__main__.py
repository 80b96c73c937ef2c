from datacreek_assets.cli import main

main()
